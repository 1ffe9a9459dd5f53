"""Command configurations: dataclass defaults < YAML file (--config) < --set key=value < explicit flags.

Every field of a config dataclass is a YAML key and gets a command-line flag (--batch-size for batch_size);
`config/<command>.yaml` documents the keys with their defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..constants import DEVICE_FORMS, DEVICE_PATTERN
from ..files import atomic_write_text

T = TypeVar("T")


def device_type(text: str) -> str:
    """argparse `type=` for a device (auto, cpu, cuda, cuda:N or mps); whether it is usable is checked where used."""
    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid device {text!r}: use {DEVICE_FORMS}")
    return text


def image_size_type(text: str) -> tuple[int, int]:
    """argparse `type=` for an image size written HEIGHTxWIDTH (rows first, as sensor_msgs/Image and numpy
    shapes): '512x1024' -> (512, 1024)."""
    height, sep, width = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        size = int(height), int(width)
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size is HEIGHTxWIDTH in pixels, e.g. 512x1024; got {text!r}") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"image height and width must be at least 1, got {text!r}")
    return size


# Keys whose values need more than their type's check; each function raises argparse.ArgumentTypeError.
KEY_TYPES = {"device": device_type}


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, but 1e-3, 1E+5 and .5e-2 are floats (as in YAML 1.2): PyYAML's YAML 1.1 resolver
    reads a float without a dot, or with an unsigned exponent, as a string. Used for --config and --set alike."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and, when known, where it is."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _parse_override(item: str) -> tuple[str, Any]:
    """'--set lr=1e-3' -> ('lr', 0.001); a missing '=' or key, or a value that is not YAML, raises ValueError."""
    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=0.005")
    try:
        return key, yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"--set {item!r}: the value is not valid YAML ({_yaml_problem(exc)}); "
                         "quote it, e.g. --set 'name=\"a: b\"'") from None


def option(default: Any, help: str) -> Any:
    """A config field with an immutable default and its help text (shown by --help, mirrored in config/*.yaml).
    List-valued keys use `dataclasses.field(default=None | default_factory=..., metadata=doc(help))`."""
    return dataclasses.field(default=default, metadata=doc(help))


def doc(help: str) -> dict[str, str]:
    return {"help": help}


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(scalar type, is_list) of a field annotation such as int, str | None or list[str] | None."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """--config FILE, --set KEY=VALUE (repeatable) and one flag per config key."""
    parser.add_argument("--config", type=Path, help="YAML file of keys (see config/*.yaml); flags win")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key (YAML syntax for the value, e.g. --set lr=0.005)")
    group = parser.add_argument_group("configuration keys (each also settable in the YAML file)")
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        scalar, is_list = _base_type(hints[f.name])
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if scalar is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=KEY_TYPES.get(f.name, scalar), nargs="+" if is_list else None,
                               default=None, help=help_text)


def _check_type(config_cls: type, key: str, value: Any, source: str) -> Any:
    hints = typing.get_type_hints(config_cls)
    scalar, is_list = _base_type(hints[key])
    optional = type(None) in typing.get_args(hints[key])
    if value is None:
        if optional:
            return None
        raise ValueError(f"{source}: {key} cannot be empty")
    if is_list:
        value = value if isinstance(value, list) else [value]
        return [_check_scalar(scalar, key, v, source) for v in value]
    return _check_scalar(scalar, key, value, source)


def _check_scalar(scalar: type, key: str, value: Any, source: str) -> Any:
    if scalar is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if scalar is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, scalar) or (scalar is int and isinstance(value, bool)):
        raise ValueError(f"{source}: {key} must be {scalar.__name__}, got {value!r}")
    if key in KEY_TYPES:
        try:
            KEY_TYPES[key](value)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{source}: {exc}") from None
    return value


def resolve_config(config_cls: type[T], args: argparse.Namespace) -> T:
    """Build the config: defaults, then the YAML file, then --set overrides, then explicit flags."""
    names = [f.name for f in dataclasses.fields(config_cls)]
    values: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = yaml.load(path.read_text(), Loader=ConfigLoader) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of keys to values")
        values.update({k: (v, str(path)) for k, v in data.items()})
    for item in getattr(args, "overrides", []) or []:
        key, value = _parse_override(item)
        values[key] = (value, f"--set {item}")
    for name in names:
        flag_value = getattr(args, name, None)
        if flag_value is not None:
            values[name] = (flag_value, "--" + name.replace("_", "-"))
    unknown = sorted(str(k) for k in values if k not in names)
    if unknown:
        raise ValueError(f"unknown configuration key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
    checked = {k: _check_type(config_cls, k, v, source) for k, (v, source) in values.items()}
    return config_cls(**checked)


def save_config(config: Any, path: Path) -> Path:
    """Write the resolved configuration as YAML (reusable with --config)."""
    return atomic_write_text(path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
