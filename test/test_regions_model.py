"""RoofSAM's point prompt encoder and class decoder against the official SAM modules, and its file formats."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import oracles
import pytest
import torch
from region_workspace import IMG, save_tiny_sam, tiny_sam_architecture

from fpseg_core.errors import CheckpointError
from fpseg_core.modeling.class_decoder import ClassDecoder
from fpseg_core.modeling.point_prompt_encoder import PointPromptEncoder
from fpseg_core.regions import RegionClassifier
from fpseg_core.regions.loader import load_decoder, save_decoder
from fpseg_core.regions.network import RegionHead

GRID, INPUT = 16, 256  # a small embedding grid keeps the comparison fast; the layout is SAM's
N_CLASSES = 5


def _perturb(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.fixture(scope="module")
def official():
    """Official SAM prompt encoder and mask decoder plus a plain MLP class head, all with random weights."""
    oracles.segment_anything()
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
    from segment_anything.modeling.mask_decoder import MLP

    torch.manual_seed(0)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=256,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)).eval()
    prompt_encoder = PromptEncoder(256, (GRID, GRID), (INPUT, INPUT), mask_in_chans=16).eval()
    head = MLP(256, 256, N_CLASSES, 3).eval()
    for seed, module in enumerate((decoder, prompt_encoder, head)):
        _perturb(module, seed + 1)
    return prompt_encoder, decoder, head


def _official_logits(prompt_encoder, decoder, head, embedding, points) -> torch.Tensor:
    """RoofSAM's forward composed from the official modules, as ROOFSAM_FACTS.md describes: [R, C, K]."""
    labels = torch.ones(points.shape[:2], dtype=torch.int64)
    sparse, dense = prompt_encoder(points=(points, labels), boxes=None, masks=None)
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(len(points), -1, -1), sparse], dim=1)
    src = torch.repeat_interleave(embedding, len(points), dim=0) + dense
    pos = torch.repeat_interleave(prompt_encoder.get_dense_pe(), len(points), dim=0)
    hs, _ = decoder.transformer(src, pos, tokens)
    k = points.shape[1]
    return head(hs[:, 5 : 5 + k, :]).transpose(1, 2)


def _roofsam_state(decoder, head) -> dict[str, torch.Tensor]:
    """A decoder file as RoofSAM saves it: SAM's mask decoder keys plus class_pred_mlp.*."""
    return {**decoder.state_dict(), **{f"class_pred_mlp.{k}": v for k, v in head.state_dict().items()}}


def _ours(official) -> RegionHead:
    prompt_encoder, decoder, head = official
    ours_pe = PointPromptEncoder(256, (GRID, GRID), (INPUT, INPUT))
    weights = {k: v for k, v in prompt_encoder.state_dict().items() if not k.startswith("mask_downscaling.")}
    ours_pe.load_state_dict(weights, strict=True)
    ours_decoder = ClassDecoder(N_CLASSES)
    ours_decoder.load_state_dict(_roofsam_state(decoder, head), strict=True)
    return RegionHead(ours_pe, ours_decoder).eval()


@pytest.mark.parametrize(("n_regions", "k"), [(1, 1), (3, 4), (2, 10)])
def test_point_logits_match_the_official_sam_modules(official, n_regions: int, k: int) -> None:
    generator = torch.Generator().manual_seed(k)
    embedding = torch.randn(1, 256, GRID, GRID, generator=generator)
    points = torch.rand(n_regions, k, 2, generator=generator) * INPUT
    classifier = RegionClassifier(None, _ours(official), [f"c{i}" for i in range(N_CLASSES)], INPUT)
    with torch.no_grad():
        expected = _official_logits(*official, embedding, points)
        got = classifier.point_logits(embedding, points)
    assert got.shape == (n_regions, N_CLASSES, k)
    assert (got - expected).abs().max().item() < 1e-4
    assert expected.abs().max().item() > 1e-2


def test_sparse_tokens_match_the_official_prompt_encoder(official) -> None:
    prompt_encoder = official[0]
    ours = _ours(official).prompt_encoder
    points = torch.rand(2, 3, 2) * INPUT
    expected, dense = prompt_encoder(points=(points, torch.ones(2, 3)), boxes=None, masks=None)
    torch.testing.assert_close(ours(points), expected)
    torch.testing.assert_close(ours.dense_no_mask(), dense[:1])
    torch.testing.assert_close(ours.dense_pe(), prompt_encoder.get_dense_pe())
    assert ours(points).shape == (2, 4, 256)


def test_key_layouts_are_sams() -> None:
    pe_keys = set(PointPromptEncoder().state_dict())
    assert pe_keys == {"pe_layer.positional_encoding_gaussian_matrix", "not_a_point_embed.weight",
                       "no_mask_embed.weight", *(f"point_embeddings.{i}.weight" for i in range(4))}
    decoder = ClassDecoder(3).state_dict()
    assert decoder["mask_tokens.weight"].shape == (4, 256)
    assert decoder["class_pred_mlp.layers.2.weight"].shape == (3, 256)
    assert {k.split(".")[0] for k in decoder} == {"transformer", "iou_token", "mask_tokens", "output_upscaling",
                                                  "output_hypernetworks_mlps", "iou_prediction_head",
                                                  "class_pred_mlp"}


# ---------------------------------------------------------------------------------------------- files
def _save(path: Path, state: object) -> Path:
    torch.save(state, path)
    return path


def test_a_roofsam_decoder_file_loads_strictly_with_its_class_count(official, tmp_path: Path) -> None:
    state = _roofsam_state(official[1], official[2])
    decoder = load_decoder(_save(tmp_path / "decoder_wuppertal_0.2.pt", state))
    assert decoder.n_classes == N_CLASSES
    for key, value in decoder.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_decoder_files_that_are_not_roofsam_ones_are_refused(official, tmp_path: Path) -> None:
    state = _roofsam_state(official[1], official[2])
    missing = {k: v for k, v in state.items() if k != "iou_token.weight"}
    with pytest.raises(CheckpointError, match=r"1 missing key.*iou_token\.weight"):
        load_decoder(_save(tmp_path / "missing.pt", missing))
    with pytest.raises(CheckpointError, match=r"not a RoofSAM decoder.*class_pred_mlp\.layers\.2\.weight"):
        load_decoder(_save(tmp_path / "sam_decoder.pt", official[1].state_dict()))
    whole = {f"mask_decoder.{k}": v for k, v in state.items()}
    with pytest.raises(CheckpointError, match="whole-model checkpoint"):
        load_decoder(_save(tmp_path / "whole.pt", whole))
    text = tmp_path / "page.pt"
    text.write_text("<html>not found</html>")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_decoder(text)


def test_class_names_come_from_the_sidecar_and_a_count_mismatch_is_refused(tmp_path: Path) -> None:
    decoder = ClassDecoder(3)
    path = save_decoder(decoder, ["flat", "gabled", "hipped"], tmp_path / "decoder.pt")
    assert json.loads((tmp_path / "decoder.classes.json").read_text()) == ["flat", "gabled", "hipped"]
    from fpseg_core.regions.loader import decoder_class_names

    assert decoder_class_names(path, 3) == ["flat", "gabled", "hipped"]
    assert decoder_class_names(path, 3, ["a", "b", "c"]) == ["a", "b", "c"]
    with pytest.raises(CheckpointError, match="has 3 classes but the class_names given name 2"):
        decoder_class_names(path, 3, ["a", "b"])
    (tmp_path / "decoder.classes.json").write_text('["a", "b", "c", "d"]')
    with pytest.raises(CheckpointError, match=r"decoder\.classes\.json name 4"):
        decoder_class_names(path, 3)
    (tmp_path / "decoder.classes.json").unlink()
    with pytest.warns(UserWarning, match="no decoder.classes.json"):
        assert decoder_class_names(path, 3) == ["class_0", "class_1", "class_2"]


# ------------------------------------------------------------------------------- from_checkpoint + classify
@pytest.fixture
def tiny_sam(official, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A SAM file in the official key layout around a tiny encoder (the official prompt encoder and mask
    decoder weights), and a RoofSAM decoder file."""
    prompt_encoder, decoder, head = official
    with tiny_sam_architecture():
        sam = save_tiny_sam(tmp_path / "sam_tiny.pth", prompt_encoder.state_dict(), decoder.state_dict())
        yield sam, _save(tmp_path / "decoder.pt", _roofsam_state(decoder, head))


def test_classify_an_image_equals_classify_its_embedding(tiny_sam) -> None:
    sam, decoder = tiny_sam
    names = ["a", "b", "c", "d", "e"]
    classifier = RegionClassifier.from_checkpoint(sam, decoder, class_names=names)
    assert classifier.class_names == names and classifier.img_size == IMG
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    mask = np.zeros((48, 80), dtype=bool)
    mask[10:20, 30:50] = True
    regions = [np.array([[5, 5], [40, 5], [40, 30], [5, 30]]), (50, 10, 79, 47), mask,
               np.array([[100, 100], [120, 100], [120, 120]])]  # the last lies outside the image
    results = classifier.classify(image, regions, points_per_region=3, seed=1)
    embedding = classifier.encode(image)
    assert embedding.shape == (1, 256, IMG // 16, IMG // 16)
    again = classifier.classify(regions=regions, points_per_region=3, seed=1, embedding=embedding,
                                geometry=classifier.geometry(48, 80))
    assert [r.class_name for r in results] == [r.class_name for r in again]
    assert all(r.class_name in names and len(r.votes) == 3 and r.points.shape == (3, 2) for r in results[:3])
    assert all(r.confidence == r.votes.count(r.class_name) / 3 for r in results[:3])
    assert (results[3].class_name, results[3].confidence, results[3].votes) == ("unknown", 0.0, [])
    for result in results[:3]:  # each vote is the argmax of its point's logits
        frame = torch.from_numpy(result.points * [IMG / 80, IMG / 48])[None]
        logits = classifier.point_logits(embedding, frame)[0]
        assert result.votes == [names[i] for i in logits.argmax(dim=0).tolist()]


def test_from_checkpoint_refuses_files_that_are_not_sam(tiny_sam, tmp_path: Path) -> None:
    sam, decoder = tiny_sam
    with pytest.raises(CheckpointError, match="is a RoofSAM decoder, not a SAM checkpoint"):
        RegionClassifier.from_checkpoint(decoder, decoder)
    no_points = {k: v for k, v in torch.load(sam, weights_only=True).items()
                 if not k.startswith("prompt_encoder.point_embeddings.")}
    with pytest.raises(CheckpointError, match="not an official SAM / MobileSAM checkpoint"):
        RegionClassifier.from_checkpoint(_save(tmp_path / "fpseg.pth", no_points), decoder)
    with pytest.raises(CheckpointError, match="has 5 classes but the class_names given name 2"):
        RegionClassifier.from_checkpoint(sam, decoder, class_names=["a", "b"])
