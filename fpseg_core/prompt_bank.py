"""Named per-class prompt tokens, stored as safetensors with JSON metadata.

A PromptBank is validated data. Whoever builds one, from a file or in memory, gets float32 tokens of shape
[n_classes, prompt_size, 256] holding only finite values, one unique non-empty string name per row and
string metadata; anything else raises PromptBankError naming the file, the field, what was expected and
what was found. float16, bfloat16 and float64 tokens are accepted and stored as float32 (prompt tokens
are representable in float32; a value that is not becomes infinite and is refused); integer, bool and
complex tokens are refused. Merging or subsetting never changes the dtype or device of the bank it
starts from.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import PromptBankError
from .files import SAFETENSORS_LENGTH_BYTES, atomic_write, file_kind, permission_message, unreadable_reason
from .modeling.build import EMBED_DIM

LOGGER = logging.getLogger("fpseg")

TENSOR_KEY = "prompt_embeddings"
FORMAT = "fpseg-prompt-bank/1"
TOKEN_DTYPE = torch.float32
ACCEPTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
STRING_FIELDS = ("encoder", "decoder_fingerprint", "source", "path")
WRITE_HINT = "write banks with `fpseg prompts extract` or PromptBank.save"
MAX_SHOWN = 60  # characters of a wrong value quoted in a message

NOT_A_BANK = {
    "empty": "{path} is empty (0 bytes), not a prompt bank; copy or write it again (" + WRITE_HINT + ")",
    "torch": "{path} is not a readable safetensors prompt bank: it is a torch checkpoint (pickle / zip); pass it "
             "as the checkpoint, or extract its prompts with `fpseg prompts extract`",
    "text": "{path} is not a readable safetensors prompt bank (it looks like text); " + WRITE_HINT,
    "unknown": "{path} is not a readable safetensors prompt bank (no safetensors header); " + WRITE_HINT,
}


def weights_fingerprint(state_dict: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> str:
    """A short hash of the weights whose keys start with `prefixes`: names, shapes and float32 values, so the
    same weights give the same fingerprint whatever device or dtype they live on."""
    keys = sorted(k for k in state_dict if k.startswith(prefixes))
    if not keys:
        raise ValueError(f"no weights under {', '.join(prefixes)} to fingerprint")
    digest = hashlib.sha256()
    for key in keys:
        tensor = state_dict[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def decoder_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Fingerprint of the frozen weights prompts are tuned against: mask decoder, dense prompt and PE."""
    return weights_fingerprint(
        state_dict, ("mask_decoder.", "prompt_encoder.pe_layer.", "prompt_encoder.no_mask_embed.")
    )


# ------------------------------------------------------------------------------------- reading files
def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, after checking the file is as long as the header says."""
    size = path.stat().st_size
    n = SAFETENSORS_LENGTH_BYTES
    with open(path, "rb") as file:
        length = int.from_bytes(file.read(n), "little")
        _check_length(path, size, n + length)
        raw = file.read(length)
    try:
        header = json.loads(raw)
        metadata = header.get("__metadata__") or {}
        ends = [int(info["data_offsets"][1]) for key, info in header.items() if key != "__metadata__"]
        if not isinstance(metadata, dict):
            raise TypeError("__metadata__ is not a JSON object")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, IndexError, TypeError,
            ValueError) as exc:
        raise PromptBankError(f"{path} is not a readable safetensors prompt bank (its header is corrupt: "
                              f"{exc}); {WRITE_HINT}") from exc
    _check_length(path, size, n + length + max(ends, default=0))
    return header


def _check_length(path: Path, size: int, expected: int) -> None:
    if size < expected:
        raise PromptBankError(f"{path} is truncated: its safetensors header promises {expected} bytes, the file "
                              f"has {size}; copy or write the bank again")


def _read_bank_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a prompt-bank file; every problem with the file is a PromptBankError."""
    reason = unreadable_reason(path, "prompt bank")
    if reason:
        raise PromptBankError(reason)
    kind = file_kind(path)
    if kind != "safetensors":
        raise PromptBankError(NOT_A_BANK[kind].format(path=path))
    metadata = read_safetensors_header(path).get("__metadata__") or {}
    try:
        tensors = load_file(str(path))
    except (SafetensorError, ValueError) as exc:
        raise PromptBankError(f"{path} is not a readable safetensors prompt bank ({exc}); {WRITE_HINT}") from exc
    if metadata.get("format") != FORMAT or TENSOR_KEY not in tensors:
        raise PromptBankError(
            f"{path} is a safetensors file but not an FPSeg prompt bank (expected metadata format "
            f"{FORMAT!r} and a tensor {TENSOR_KEY!r}, found format {metadata.get('format')!r} and "
            f"tensors {sorted(tensors)})"
        )
    return tensors, metadata


def _json_field(metadata: Mapping[str, str], key: str, where: str, default: str | None = None) -> object:
    raw = metadata.get(key, default)
    if raw is None:
        raise _invalid(where, key, "must be in the metadata", "no such field")
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise _invalid(where, key, "must be JSON text", f"{_shown(raw)} (not JSON)") from None


# ------------------------------------------------------------------------------------------ validation
def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def _invalid(where: str, name: str, rule: str, found: str) -> PromptBankError:
    """The one message shape of a field that breaks the bank's invariant."""
    return PromptBankError(f"{where}: field {name!r} {rule}, found {found}; {WRITE_HINT}")


def _valid_names(names: object, where: str) -> list[str]:
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise _invalid(where, "names", "must be a list of class names", f"a {type(names).__name__} {_shown(names)}")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise _invalid(where, "names", "must be strings", f"{_shown(name)} ({type(name).__name__}) at position {i}")
        if not name.strip():
            raise _invalid(where, "names", "must be non-empty", f"{name!r} at position {i}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _invalid(where, "names", "must be unique", f"duplicate class names {', '.join(duplicates)}")
    return list(names)


def _valid_tokens(tokens: object, names: list[str], where: str) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        raise _invalid(where, TENSOR_KEY, "must be a torch.Tensor", type(tokens).__name__)
    if tokens.dtype not in ACCEPTED_DTYPES:
        raise _invalid(where, TENSOR_KEY, "must be floating point (float16, bfloat16, float32 or float64)",
                       str(tokens.dtype))
    if tokens.ndim != 3 or tokens.shape[2] != EMBED_DIM or 0 in tokens.shape:
        raise _invalid(where, TENSOR_KEY, f"must have shape [n_classes, prompt_size, {EMBED_DIM}] (none of them 0)",
                       str(list(tokens.shape)))
    if len(names) != tokens.shape[0]:
        raise _invalid(where, "names", f"must name each row of {TENSOR_KEY}",
                       f"{len(names)} class names for {tokens.shape[0]} rows")
    tokens = tokens.to(TOKEN_DTYPE)
    finite = torch.isfinite(tokens)
    if not bool(finite.all()):
        bad_rows = (~finite).flatten(1).any(1).tolist()
        nan = int(torch.isnan(tokens).sum())
        raise _invalid(where, TENSOR_KEY, f"must hold finite {TOKEN_DTYPE} values",
                       f"{nan} NaN and {int((~finite).sum()) - nan} infinite value(s) in class(es) "
                       + ", ".join(name for name, bad in zip(names, bad_rows, strict=True) if bad))
    return tokens


def _check_metadata(bank: PromptBank, where: str) -> None:
    for name in STRING_FIELDS:
        value = getattr(bank, name)
        if not isinstance(value, str):
            raise _invalid(where, name, "must be a string", f"{_shown(value)} ({type(value).__name__})")
    extra = bank.extra
    if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise _invalid(where, "extra", "must be a dict of strings to strings", _shown(extra))


@dataclass
class PromptBank:
    """Class names and their prompt tokens [n_classes, prompt_size, 256], plus where they came from.

    `decoder_fingerprint` names the frozen decoder the tokens were tuned for; `encoder` the image encoder.
    Construction validates every field (see the module docstring) and stores the tokens as float32.
    """

    names: list[str]
    embeddings: torch.Tensor
    encoder: str = ""
    decoder_fingerprint: str = ""
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    path: str = ""  # the file it was loaded from, for messages; not saved

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the bank's invariant (raises PromptBankError); tokens of another float dtype become float32."""
        where = self.path if isinstance(self.path, str) and self.path else "prompt bank"
        self.names = _valid_names(self.names, where)
        self.embeddings = _valid_tokens(self.embeddings, self.names, where)
        _check_metadata(self, where)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def prompt_size(self) -> int:
        return int(self.embeddings.shape[1])

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(
                f"unknown class {name!r}; the prompt bank has: {', '.join(self.names)}"
            ) from None

    def indices(self, names: Iterable[str]) -> list[int]:
        """Bank rows of `names`, in the order given; unknown names are reported all at once."""
        names = list(names)
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise KeyError(
                f"unknown class(es) {', '.join(map(repr, unknown))}; the prompt bank has: {', '.join(self.names)}"
            )
        return [self.names.index(n) for n in names]

    def subset(self, names: Sequence[str]) -> PromptBank:
        """A bank of only `names`, in that order (same dtype and device)."""
        return replace(self, names=list(names), embeddings=self.embeddings[self.indices(names)].clone())

    def like(self, reference: PromptBank) -> PromptBank:
        """This bank with its tokens on `reference`'s device and dtype: a swap never moves or casts the bank
        that is running."""
        target = reference.embeddings
        return replace(self, embeddings=self.embeddings.to(target.device, target.dtype))

    def merge(self, other: PromptBank) -> PromptBank:
        """This bank plus `other`'s classes; a name present in both takes `other`'s tokens. The result keeps
        this bank's dtype and device."""
        self.check_compatible_with(other)
        names = list(self.names)
        rows = list(self.embeddings)
        for name, row in zip(other.names, other.like(self).embeddings, strict=True):
            if name in names:
                rows[names.index(name)] = row
            else:
                names.append(name)
                rows.append(row)
        return replace(self, names=names, embeddings=torch.stack(rows), source=f"{self.source}+{other.source}")

    def check_compatible_with(self, other: PromptBank) -> None:
        if other.prompt_size != self.prompt_size:
            raise PromptBankError(
                f"prompt size {other.prompt_size} does not match this bank's {self.prompt_size}; "
                "all classes of one bank share one prompt size"
            )
        if self.decoder_fingerprint and other.decoder_fingerprint and (
            self.decoder_fingerprint != other.decoder_fingerprint
        ):
            raise PromptBankError(
                f"decoder fingerprint {other.decoder_fingerprint} differs from this bank's "
                f"{self.decoder_fingerprint}: the prompts were tuned for another decoder"
            )

    def check_fits(self, fingerprint: str, force: bool = False) -> None:
        """Refuse a bank tuned for another decoder than `fingerprint`, unless `force`.

        Any prompt size fits a decoder; the fingerprint is what says the tokens were tuned against it. A bank that
        records none (made by another tool) is accepted with a warning on the "fpseg" logger.
        """
        if force or self.decoder_fingerprint == fingerprint:
            return
        if not self.decoder_fingerprint:  # written by another tool: usable, but nothing says it fits
            LOGGER.warning("prompt bank '%s' records no decoder fingerprint, so nothing says it was tuned for this "
                           "model's decoder (%s); it is used unchecked (banks written by fpseg train / prompts "
                           "record one)", self.path or self.source, fingerprint)
            return
        raise PromptBankError(
            f"prompt bank '{self.path or self.source}' was tuned for decoder {self.decoder_fingerprint}, but the "
            f"model's decoder is {fingerprint}; train prompts for this model, or pass force=True "
            "(--force-prompts) to use them anyway"
        )

    def save(self, path: str | Path) -> Path:
        """Write the bank (validated again: fields may have been changed since construction) atomically,
        with the umask's file mode; a reader never sees half a bank."""
        self.validate()
        metadata = {
            "format": FORMAT,
            "names": json.dumps(self.names),
            "prompt_size": str(self.prompt_size),
            "encoder": self.encoder,
            "decoder_fingerprint": self.decoder_fingerprint,
            "source": self.source,
            "extra": json.dumps(self.extra),
        }
        tensors = {TENSOR_KEY: self.embeddings.detach().to("cpu").contiguous()}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: str | Path) -> PromptBank:
        """Read a bank written by `save`; any problem raises PromptBankError naming the file and the fix."""
        path = Path(path)
        try:
            tensors, metadata = _read_bank_file(path)
        except PermissionError as exc:
            raise PromptBankError(permission_message(path, exc)) from exc
        except OSError as exc:
            raise PromptBankError(f"{path} could not be read ({exc.strerror or exc}); check the file and the "
                                  "disk") from exc
        where = str(path)
        return cls(
            names=_json_field(metadata, "names", where),
            embeddings=tensors[TENSOR_KEY],
            encoder=metadata.get("encoder", ""),
            decoder_fingerprint=metadata.get("decoder_fingerprint", ""),
            source=metadata.get("source") or path.name,
            extra=_json_field(metadata, "extra", where, default="{}"),
            path=where,
        )
