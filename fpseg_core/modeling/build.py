"""Build FPSeg networks for each supported encoder from a small, serialisable configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .fpseg import FPSegModel
from .image_encoder import VIT_CONFIGS, ImageEncoderViT
from .mask_decoder import FPSegMaskDecoder
from .prompt_encoder import FPSegPromptEncoder
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

EMBED_DIM = 256
PATCH_STRIDE = 16

MOBILESAM_CONFIG: dict[str, Any] = {
    "embed_dims": [64, 128, 160, 320],
    "depths": [2, 2, 6, 2],
    "num_heads": [2, 4, 5, 10],
    "window_sizes": [7, 7, 14, 7],
    "mlp_ratio": 4.0,
    "mbconv_expand_ratio": 4.0,
    "local_conv_size": 3,
}

ENCODERS = ("mobilesam", *VIT_CONFIGS)


@dataclass
class FPSegConfig:
    """Everything needed to rebuild an FPSeg network (saved inside the project's checkpoints).

    `encoder_overrides` changes encoder constructor arguments; tests use it for tiny models.
    """

    encoder: str = "mobilesam"
    n_classes: int = 33
    prompt_size: int = 64
    img_size: int = 1024
    encoder_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        if self.img_size % PATCH_STRIDE:
            raise ValueError(f"img_size must be a multiple of {PATCH_STRIDE}, got {self.img_size}")

    @property
    def embedding_size(self) -> int:
        return self.img_size // PATCH_STRIDE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FPSegConfig:
        known = {k: data[k] for k in ("encoder", "n_classes", "prompt_size", "img_size", "encoder_overrides")
                 if k in data}
        return cls(**known)


def build_image_encoder(config: FPSegConfig) -> nn.Module:
    """The SAM / MobileSAM image encoder named by `config.encoder`: [B, 3, S, S] -> [B, 256, S/16, S/16]."""
    if config.encoder == "mobilesam":
        kwargs = {**MOBILESAM_CONFIG, **config.encoder_overrides}
        return TinyViT(img_size=config.img_size, in_chans=3, num_classes=1000, **kwargs)
    kwargs = {**VIT_CONFIGS[config.encoder], **config.encoder_overrides, "img_size": config.img_size}
    return ImageEncoderViT(**kwargs)


def build_fpseg(config: FPSegConfig) -> FPSegModel:
    """A randomly initialised FPSeg network for `config` (load weights afterwards)."""
    grid = (config.embedding_size, config.embedding_size)
    prompt_encoder = FPSegPromptEncoder(config.n_classes, config.prompt_size, grid, EMBED_DIM)
    decoder = FPSegMaskDecoder(
        EMBED_DIM, TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8)
    )
    model = FPSegModel(build_image_encoder(config), prompt_encoder, decoder, img_size=config.img_size)
    return model.eval()


def tiny_config(encoder: str = "mobilesam", n_classes: int = 4, prompt_size: int = 4,
                img_size: int = 128) -> FPSegConfig:
    """A very small network of the given encoder family, for tests, demos and smoke runs."""
    overrides: dict[str, Any]
    if encoder == "mobilesam":
        overrides = {"embed_dims": [16, 32, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                     "window_sizes": [4, 4, 4, 4]}
    else:
        overrides = {"embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,),
                     "window_size": 4}
    return FPSegConfig(encoder, n_classes, prompt_size, img_size, overrides)
