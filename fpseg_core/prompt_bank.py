"""Named per-class prompt tokens, stored as safetensors with JSON metadata."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import PromptBankError

TENSOR_KEY = "prompt_embeddings"
FORMAT = "fpseg-prompt-bank/1"
EMBED_DIM = 256


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


@dataclass
class PromptBank:
    """Class names and their prompt tokens [n_classes, prompt_size, 256], plus where they came from.

    `decoder_fingerprint` names the frozen decoder the tokens were tuned for; `encoder` the image encoder.
    """

    names: list[str]
    embeddings: torch.Tensor
    encoder: str = ""
    decoder_fingerprint: str = ""
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    path: str = ""  # the file it was loaded from, for messages; not saved

    def __post_init__(self) -> None:
        self.names = list(self.names)
        if self.embeddings.ndim != 3 or self.embeddings.shape[2] != EMBED_DIM:
            raise PromptBankError(
                f"prompt tokens must have shape [n_classes, prompt_size, {EMBED_DIM}], "
                f"got {list(self.embeddings.shape)}"
            )
        if len(self.names) != self.embeddings.shape[0]:
            raise PromptBankError(
                f"{len(self.names)} class names for {self.embeddings.shape[0]} rows of prompt tokens"
            )
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        if duplicates:
            raise PromptBankError(f"duplicate class names in prompt bank: {', '.join(duplicates)}")
        if any(not n.strip() for n in self.names):
            raise PromptBankError("empty class name in prompt bank")

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
        """A bank of only `names`, in that order."""
        return replace(self, names=list(names), embeddings=self.embeddings[self.indices(names)].clone())

    def merge(self, other: PromptBank) -> PromptBank:
        """This bank plus `other`'s classes; a name present in both takes `other`'s tokens."""
        self.check_compatible_with(other)
        names = list(self.names)
        rows = list(self.embeddings.to(other.embeddings.dtype))
        for name, row in zip(other.names, other.embeddings, strict=True):
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

        Any prompt size fits a decoder; the fingerprint is what says the tokens were tuned against it.
        """
        if force or not self.decoder_fingerprint or self.decoder_fingerprint == fingerprint:
            return
        raise PromptBankError(
            f"prompt bank '{self.path or self.source}' was tuned for decoder {self.decoder_fingerprint}, but the "
            f"model's decoder is {fingerprint}; train prompts for this model, or pass force=True "
            "(--force-prompts) to use them anyway"
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": FORMAT,
            "names": json.dumps(self.names),
            "prompt_size": str(self.prompt_size),
            "encoder": self.encoder,
            "decoder_fingerprint": self.decoder_fingerprint,
            "source": self.source,
            "extra": json.dumps(self.extra),
        }
        save_file({TENSOR_KEY: self.embeddings.detach().to("cpu").contiguous()}, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PromptBank:
        """Read a bank written by `save`; any problem raises PromptBankError naming the file and the fix."""
        path = Path(path)
        if not path.is_file():
            raise PromptBankError(f"prompt bank {path} does not exist")
        try:
            tensors = load_file(str(path))
            with open(path, "rb") as f:
                header_len = int(np.frombuffer(f.read(8), dtype="<u8")[0])
                header = json.loads(f.read(header_len))
        except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
            raise PromptBankError(
                f"{path} is not a readable safetensors prompt bank ({exc}); write banks with "
                "`fpseg prompts extract` or PromptBank.save"
            ) from exc
        metadata = header.get("__metadata__") or {}
        if metadata.get("format") != FORMAT or TENSOR_KEY not in tensors:
            raise PromptBankError(
                f"{path} is a safetensors file but not an FPSeg prompt bank (expected metadata format "
                f"{FORMAT!r} and a tensor {TENSOR_KEY!r}, found format {metadata.get('format')!r} and "
                f"tensors {sorted(tensors)})"
            )
        try:
            names = json.loads(metadata["names"])
            extra = json.loads(metadata.get("extra", "{}"))
        except (KeyError, json.JSONDecodeError) as exc:
            raise PromptBankError(f"{path}: class names in the metadata are missing or not JSON") from exc
        try:
            return cls(
                names=names,
                embeddings=tensors[TENSOR_KEY],
                encoder=metadata.get("encoder", ""),
                decoder_fingerprint=metadata.get("decoder_fingerprint", ""),
                source=metadata.get("source") or path.name,
                extra=extra,
                path=str(path),
            )
        except PromptBankError as exc:
            raise PromptBankError(f"{path}: {exc}") from exc
