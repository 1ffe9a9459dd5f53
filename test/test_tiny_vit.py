"""fpseg_core.modeling.tiny_vit.TinyViT against the official MobileSAM TinyViT (the oracle)."""

from __future__ import annotations

import pytest
import torch
from oracles import mobile_sam
from torch import nn

from fpseg_core.modeling.tiny_vit import TinyViT

# MobileSAM's TinyViT-5M, as in mobile_sam.build_sam.build_sam_vit_t.
MOBILE_SAM_5M = {
    "in_chans": 3,
    "num_classes": 1000,
    "embed_dims": [64, 128, 160, 320],
    "depths": [2, 2, 6, 2],
    "num_heads": [2, 4, 5, 10],
    "window_sizes": [7, 7, 14, 7],
    "mlp_ratio": 4.0,
    "mbconv_expand_ratio": 4.0,
    "local_conv_size": 3,
}


def official(img_size: int) -> nn.Module:
    """The official TinyViT-5M, freshly built (no train()/eval() call yet, so no `ab` cache)."""
    return mobile_sam().modeling.TinyViT(
        img_size=img_size, drop_rate=0.0, drop_path_rate=0.0, layer_lr_decay=0.8, **MOBILE_SAM_5M
    )


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Perturb every parameter and BatchNorm statistic away from its init, then switch to eval mode.

    eval() comes last: it is where the official Attention caches its (now perturbed) biases.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
    return model.eval()


def official_forward_any_size(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The official forward without its hard-coded 64x64 final grid (its layers handle any img_size)."""
    x = model.patch_embed(x)
    for layer in model.layers:
        x = layer(x)
    side = model.img_size // 16
    return model.neck(x.view(x.shape[0], side, side, -1).permute(0, 3, 1, 2))


def test_state_dict_keys_shapes_and_buffers_match_official() -> None:
    ref, ours = official(1024), TinyViT(img_size=1024, **MOBILE_SAM_5M)
    ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    assert {k: v.dtype for k, v in ours_sd.items()} == {k: v.dtype for k, v in ref_sd.items()}
    ref_buffers, ours_buffers = dict(ref.named_buffers()), dict(ours.named_buffers())
    assert set(ours_buffers) == set(ref_buffers)
    non_persistent = set(ref_buffers) - set(ref_sd)
    assert non_persistent == set(ours_buffers) - set(ours_sd)
    assert non_persistent  # the attention_bias_idxs
    for name in non_persistent:
        torch.testing.assert_close(ours_buffers[name], ref_buffers[name], rtol=0, atol=0)


def test_matches_official_at_1024() -> None:
    ref = randomised(official(1024), seed=0)
    ours = TinyViT(img_size=1024, **MOBILE_SAM_5M).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = ref(x), ours(x)
    assert actual.shape == (1, 256, 64, 64)
    assert (actual - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize(("img_size", "batch"), [(224, 1), (256, 2), (512, 1)])
def test_matches_official_layers_at_smaller_sizes(img_size: int, batch: int) -> None:
    """Window padding: none at 224 (grids 56/28/14), some at 256 and 512 (e.g. a 16 grid, 14 windows)."""
    ref = randomised(official(img_size), seed=2)
    ours = TinyViT(img_size=img_size, **MOBILE_SAM_5M).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, actual = official_forward_any_size(ref, x), ours(x)
    assert actual.shape == (batch, 256, img_size // 16, img_size // 16)
    assert (actual - expected).abs().max().item() < 1e-4


def test_output_shape_at_256() -> None:
    with torch.no_grad():
        out = TinyViT(img_size=256).eval()(torch.randn(2, 3, 256, 256))
    assert out.shape == (2, 256, 16, 16)
