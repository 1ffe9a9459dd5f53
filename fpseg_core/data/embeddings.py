"""Precomputed image embeddings on disk: one safetensors file per image plus a manifest.

root/manifest.json                      encoder, its weight fingerprint, img_size, input mode, dtype, files
root/<split>/<frame key>.safetensors    tensor "embedding" [256, h, w] (metadata: the encoder fingerprint)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..files import atomic_write, atomic_write_text
from ..prompt_bank import weights_fingerprint

FORMAT = "fpseg-embeddings/1"
MANIFEST_NAME = "manifest.json"
EMBEDDING_KEY = "embedding"
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def encoder_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A short hash of the image-encoder weights of an FPSeg state dict."""
    return weights_fingerprint(state_dict, ("image_encoder.",))


@dataclass(frozen=True)
class EmbeddingHeader:
    """What the embeddings of a store were computed with; a store never mixes two headers."""

    encoder: str
    encoder_fingerprint: str
    img_size: int
    input_mode: str
    dtype: str
    checkpoint: str = ""  # file name, for people; not compared

    def differences(self, other: EmbeddingHeader) -> list[str]:
        return [
            f"{name} {getattr(self, name)!r} vs {getattr(other, name)!r}"
            for name in ("encoder", "encoder_fingerprint", "img_size", "input_mode", "dtype")
            if getattr(self, name) != getattr(other, name)
        ]


class EmbeddingStore:
    """A folder of precomputed embeddings (see the module docstring). Open with `open` or `create`."""

    def __init__(self, root: Path, header: EmbeddingHeader, files: dict[str, list[str]]) -> None:
        self.root = root
        self.header = header
        self.files = files

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @classmethod
    def open(cls, root: str | Path) -> EmbeddingStore:
        root = Path(root)
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: {root} holds no precomputed embeddings; run "
                f"`fpseg precompute --out {root} ...` first"
            )
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            header = EmbeddingHeader(**data["header"])
            files = {split: list(keys) for split, keys in data.get("files", {}).items()}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a valid embedding manifest ({exc}); delete {root} and "
                             "run `fpseg precompute` again") from exc
        return cls(root, header, files)

    @classmethod
    def create(cls, root: str | Path, header: EmbeddingHeader) -> EmbeddingStore:
        """A new store, or the existing one at `root` if it was made with the same header (resuming)."""
        root = Path(root)
        if (root / MANIFEST_NAME).exists():
            store = cls.open(root)
            differences = store.header.differences(header)
            if differences:
                raise ValueError(
                    f"{root} already holds embeddings computed differently ({'; '.join(differences)}); "
                    "choose another --out folder, or delete this one to recompute"
                )
            return store
        root.mkdir(parents=True, exist_ok=True)
        store = cls(root, header, {})
        store.save_manifest()
        return store

    def save_manifest(self) -> None:
        data = {"format": FORMAT, "header": asdict(self.header),
                "files": {split: sorted(keys) for split, keys in self.files.items()}}
        atomic_write_text(self.manifest_path, json.dumps(data, indent=1) + "\n")

    def path(self, split: str, key: str) -> Path:
        return self.root / split / f"{key}.safetensors"

    def has(self, split: str, key: str) -> bool:
        """True if the file exists (files are written atomically: an existing file is complete)."""
        return self.path(split, key).is_file()

    def write(self, split: str, key: str, embedding: torch.Tensor) -> Path:
        tensor = embedding.detach().to("cpu", DTYPES[self.header.dtype]).contiguous()
        metadata = {"format": FORMAT, "encoder_fingerprint": self.header.encoder_fingerprint}
        return atomic_write(self.path(split, key),
                            lambda tmp: save_file({EMBEDDING_KEY: tensor}, str(tmp), metadata=metadata))

    def record(self, split: str, keys: Iterable[str]) -> None:
        """Add finished files to the manifest's list for `split` and save it."""
        self.files[split] = sorted(set(self.files.get(split, [])) | set(keys))
        self.save_manifest()

    def read(self, split: str, key: str) -> torch.Tensor:
        """The float32 embedding [256, h, w] of one image."""
        path = self.path(split, key)
        if not path.is_file():
            raise FileNotFoundError(
                f"image {key} of split {split!r} has no embedding ({path} is missing); run "
                f"`fpseg precompute --split {split} --out {self.root} ...` (it resumes where it stopped)"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                fingerprint = (f.metadata() or {}).get("encoder_fingerprint")
                tensor = f.get_tensor(EMBEDDING_KEY)
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path} is unreadable ({exc}); delete it and run `fpseg precompute` "
                             "again") from exc
        if fingerprint != self.header.encoder_fingerprint:
            raise ValueError(f"{path} was computed by encoder {fingerprint}, not by this store's "
                             f"{self.header.encoder_fingerprint}; delete it and run `fpseg precompute` again")
        return tensor.to(torch.float32)

    def check_covers(self, split: str, keys: Iterable[str]) -> None:
        """Raise FileNotFoundError naming the images of `split` that have no embedding yet."""
        missing = [k for k in keys if not self.has(split, k)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) of split {split!r} have no embedding in {self.root} (e.g. "
                f"{missing[0]}); run `fpseg precompute --split {split} --out {self.root} ...` (it resumes)"
            )

    def check_encoder(self, fingerprint: str, what: str) -> None:
        """Refuse to use these embeddings with a model whose encoder weights differ."""
        if fingerprint != self.header.encoder_fingerprint:
            raise ValueError(
                f"the embeddings in {self.root} were computed by encoder {self.header.encoder_fingerprint} "
                f"({self.header.encoder}, {self.header.checkpoint or 'unknown file'}), but {what} has "
                f"encoder {fingerprint}; precompute with the same checkpoint"
            )
