"""fpseg_core's ViT image encoder against the official SAM `ImageEncoderViT`."""

from __future__ import annotations

from functools import partial

import oracles
import pytest
import torch
from torch import nn

from fpseg_core.modeling.image_encoder import VIT_CONFIGS, ImageEncoderViT

SAM_NORM = partial(nn.LayerNorm, eps=1e-6)


def _perturb(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Add noise to every parameter, so zero-initialised ones (rel_pos, pos_embed, biases) matter too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)


def _compare(kwargs: dict, batch: int = 2, seed: int = 0) -> float:
    """Build official and ours with `kwargs`, copy perturbed official weights strictly, return max |diff|."""
    sa = oracles.segment_anything()
    torch.manual_seed(seed)
    official = sa.modeling.ImageEncoderViT(**kwargs).eval()
    _perturb(official, seed)
    ours = ImageEncoderViT(**kwargs).eval()
    ours.load_state_dict(official.state_dict(), strict=True)

    img = kwargs.get("img_size", 1024)
    x = torch.randn(batch, kwargs.get("in_chans", 3), img, img, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = official(x)
        got = ours(x)
    assert got.shape == expected.shape
    grid = img // kwargs.get("patch_size", 16)
    assert got.shape == (batch, kwargs.get("out_chans", 256), grid, grid)
    return (got - expected).abs().max().item()


def _vit_b_small(img_size: int, depth: int, global_attn: tuple[int, ...]) -> dict:
    return {
        **VIT_CONFIGS["vit_b"],
        "img_size": img_size,
        "depth": depth,
        "global_attn_indexes": global_attn,
    }


@pytest.mark.parametrize(
    "img_size",
    [
        256,  # 16x16 tokens: windows of 14 pad the grid to 28x28
        224,  # 14x14 tokens: exactly one window, no padding
    ],
)
def test_matches_official_vit_b_reduced_depth(img_size: int) -> None:
    diff = _compare(_vit_b_small(img_size, depth=4, global_attn=(1, 3)))
    assert diff < 1e-4


@pytest.mark.slow
def test_matches_official_vit_b_full_depth() -> None:
    diff = _compare(_vit_b_small(256, depth=12, global_attn=(2, 5, 8, 11)), batch=1)
    assert diff < 1e-4


@pytest.mark.parametrize(
    "kwargs",
    [
        # all-global, no relative positions, no abs pos, no qkv bias, plain LayerNorm, odd sizes
        {
            "img_size": 96,
            "patch_size": 8,
            "in_chans": 1,
            "embed_dim": 64,
            "depth": 2,
            "num_heads": 4,
            "out_chans": 32,
            "qkv_bias": False,
            "use_abs_pos": False,
        },
        # every block windowed (window 5 on a 12x12 grid: pad to 15), rel pos, mlp_ratio 2
        {
            "img_size": 96,
            "patch_size": 8,
            "embed_dim": 64,
            "depth": 2,
            "num_heads": 2,
            "mlp_ratio": 2.0,
            "out_chans": 32,
            "norm_layer": SAM_NORM,
            "use_rel_pos": True,
            "window_size": 5,
        },
        # rel_pos_zero_init off, act GELU->ReLU, mixed global / windowed
        {
            "img_size": 128,
            "patch_size": 16,
            "embed_dim": 48,
            "depth": 3,
            "num_heads": 3,
            "out_chans": 16,
            "act_layer": nn.ReLU,
            "use_rel_pos": True,
            "rel_pos_zero_init": False,
            "window_size": 3,
            "global_attn_indexes": (1,),
        },
    ],
    ids=["global-no-rel", "windowed-padded", "mixed-relu"],
)
def test_matches_official_other_configs(kwargs: dict) -> None:
    assert _compare(kwargs, seed=1) < 1e-4


def _official_encoder_meta(name: str) -> nn.Module:
    """The official encoder exactly as `build_sam.py` builds it, on the meta device (no memory)."""
    sa = oracles.segment_anything()
    with torch.device("meta"):
        return sa.sam_model_registry[name]().image_encoder


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_state_dict_matches_official(name: str) -> None:
    official = _official_encoder_meta(name)
    with torch.device("meta"):
        ours = ImageEncoderViT(**VIT_CONFIGS[name])

    expected = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert list(got) == list(expected)
    assert got == expected
    assert got["pos_embed"] == (1, 64, 64, VIT_CONFIGS[name]["embed_dim"])

    # the same layer norm eps and attention layout as the official build
    for ob, b in zip(official.blocks, ours.blocks, strict=True):
        assert b.window_size == ob.window_size
        assert b.norm1.eps == ob.norm1.eps == 1e-6
        assert b.attn.num_heads == ob.attn.num_heads


def test_vit_configs() -> None:
    assert set(VIT_CONFIGS) == {"vit_b", "vit_l", "vit_h"}
    expected = {
        "vit_b": (768, 12, 12, (2, 5, 8, 11)),
        "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
        "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    }
    for name, (dim, depth, heads, glob) in expected.items():
        cfg = VIT_CONFIGS[name]
        assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"]) == (dim, depth, heads)
        assert tuple(cfg["global_attn_indexes"]) == glob
        assert cfg["window_size"] == 14
        assert cfg["use_rel_pos"] is True
        assert cfg["qkv_bias"] is True
        assert cfg["mlp_ratio"] == 4
        assert cfg["out_chans"] == 256
        assert cfg["norm_layer"](8).eps == 1e-6
