"""The FPSeg decoder and prompt encoder against the official SAM modules composed as FPSeg describes."""

from __future__ import annotations

import oracles
import pytest
import torch

from fpseg_core.modeling.mask_decoder import FPSegMaskDecoder
from fpseg_core.modeling.prompt_encoder import FPSegPromptEncoder


def _perturb(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.fixture(scope="module")
def official():
    sa = oracles.segment_anything()
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    torch.manual_seed(0)
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
    ).eval()
    prompt_encoder = PromptEncoder(256, (16, 16), (64, 64), mask_in_chans=16).eval()
    _perturb(decoder, 1)
    _perturb(prompt_encoder, 2)
    return sa, decoder, prompt_encoder


def _ours_from_official(decoder, prompt_encoder, n_classes: int, prompt_size: int):
    ours = FPSegMaskDecoder(256).eval()
    state = {k: v for k, v in decoder.state_dict().items()
             if k in ours.state_dict() and k != "mask_tokens.weight"}
    state["mask_tokens.weight"] = decoder.mask_tokens.weight[:1]
    ours.load_state_dict(state, strict=True)
    ours_pe = FPSegPromptEncoder(n_classes, prompt_size, (16, 16)).eval()
    ours_pe.pe_layer.load_state_dict(prompt_encoder.pe_layer.state_dict())
    ours_pe.no_mask_embed.load_state_dict(prompt_encoder.no_mask_embed.state_dict())
    return ours, ours_pe


def _official_logits(decoder, prompt_encoder, embeddings, prompts):
    """FPSeg's decoder computed with the official modules, one (image, class) pair at a time."""
    pe = prompt_encoder.get_dense_pe()
    dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    out = torch.empty(embeddings.shape[0], prompts.shape[0], 64, 64)
    for b in range(embeddings.shape[0]):
        for n in range(prompts.shape[0]):
            tokens = torch.cat([decoder.mask_tokens.weight[:1], prompts[n]], dim=0).unsqueeze(0)
            src = embeddings[b : b + 1] + dense
            hs, src = decoder.transformer(src, pe, tokens)
            upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(1, 256, 16, 16))
            hyper = decoder.output_hypernetworks_mlps[0](hs[:, 0, :])
            out[b, n] = (hyper @ upscaled.flatten(2)).reshape(64, 64)
    return out


@pytest.mark.parametrize(("n_images", "n_classes", "prompt_size"), [(1, 1, 4), (2, 3, 8)])
def test_decoder_matches_official_sam_modules(official, n_images, n_classes, prompt_size) -> None:
    _, decoder, prompt_encoder = official
    ours, ours_pe = _ours_from_official(decoder, prompt_encoder, n_classes, prompt_size)
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(n_images, 256, 16, 16, generator=generator)
    prompts = torch.randn(n_classes, prompt_size, 256, generator=generator)
    with torch.no_grad():
        expected = _official_logits(decoder, prompt_encoder, embeddings, prompts)
        got = ours(embeddings, ours_pe.get_dense_pe(), ours_pe.dense_embedding(), prompts)
    assert got.shape == (n_images, n_classes, 64, 64)
    assert (got - expected).abs().max().item() < 1e-4
    assert expected.abs().max().item() > 1e-2  # the comparison is not between near-zero maps


def test_positional_encoding_matches_official(official) -> None:
    _, _, prompt_encoder = official
    ours = FPSegPromptEncoder(1, 1, (16, 16))
    ours.pe_layer.load_state_dict(prompt_encoder.pe_layer.state_dict())
    torch.testing.assert_close(ours.get_dense_pe(), prompt_encoder.get_dense_pe())


def test_decoder_state_dict_keys_are_the_published_ones() -> None:
    keys = set(FPSegMaskDecoder(256).state_dict())
    assert "mask_tokens.weight" in keys
    assert {k for k in keys if k.startswith("output_hypernetworks_mlps.")} == {
        f"output_hypernetworks_mlps.0.layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")
    }
    assert not any("iou" in k for k in keys)
    assert FPSegMaskDecoder(256).state_dict()["mask_tokens.weight"].shape == (1, 256)
    prompt_keys = set(FPSegPromptEncoder(33, 64).state_dict())
    assert prompt_keys == {
        "prompt_embeddings", "pe_layer.positional_encoding_gaussian_matrix", "no_mask_embed.weight"
    }
