"""`fpseg export-onnx`: the encoder and the decoder as two ONNX graphs, prompts as an input, plus a manifest.

encoder.onnx: image [1, 3, S, S] (normalised RGB) -> image_embeddings [1, 256, S/16, S/16]
decoder.onnx: image_embeddings, prompt_tokens [N, P, 256] (N dynamic) -> low_res_logits [1, N, S/4, S/4]

The published FPSeg export baked the prompts in as constants, so changing a class meant a new export and a
new engine. Here the prompt tokens are an input: any bank of the exported prompt size tuned for the same
decoder runs on the same graphs. The decoder graph is `FastMaskDecoder` (class-independent work done once).
`fpseg_onnx.json` (format and checks in `fpseg_core.artifacts`) binds the graphs to the model they came
from and lists each graph's op types (checked by `fpseg build-engine` against what TensorRT imports). Opset 17
(the default) keeps every LayerNorm one LayerNormalization node; opset 16 decomposes it (ReduceMean / Pow /
Sqrt), for ONNX parsers without LayerNormalization such as TensorRT 8.5's. A graph over protobuf's 2 GiB limit
(SAM vit_h's encoder) keeps its weights in one data file beside it (encoder.onnx.data), which the manifest lists
and checks like the graphs. Writing is safe to interrupt: the old manifest is removed first, each file is
written atomically (a graph's data file before the graph), and the new manifest comes last, so a folder with a
manifest always holds the files it describes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..artifacts import (
    DATA_FILES,
    EXPORT_OUTPUTS,
    EXTERNAL_DATA_BYTES,
    FORMAT,
    GRAPH_FILES,
    LAYERNORM_OPSET,
    OPSETS,
    SIDECAR,
    check_outputs,
    encoder_fingerprint,
    file_entry,
)
from ..constants import INPUT_MODES, MAX_CLASSES, require_choice
from ..files import atomic_write_text, install_staged
from ..modeling.build import EMBED_DIM, FPSegConfig
from ..modeling.fast_decoder import FastMaskDecoder
from ..modeling.fpseg import FPSegModel
from ..prompt_bank import decoder_fingerprint

DEFAULT_OPSET = LAYERNORM_OPSET
EXPORTER = "torch.onnx.export (TorchScript-based, dynamo=False)"


class EncoderGraph(nn.Module):
    """image [1, 3, S, S] -> image_embeddings [1, 256, S/16, S/16]."""

    def __init__(self, model: FPSegModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode(image)


class DecoderGraph(nn.Module):
    """image_embeddings [1, 256, h, w], prompt_tokens [N, P, 256] -> low_res_logits [1, N, 4h, 4w]."""

    def __init__(self, model: FPSegModel) -> None:
        super().__init__()
        self.decoder = FastMaskDecoder(model, class_chunk=None)

    def forward(self, image_embeddings: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(image_embeddings, prompt_tokens)


def export_onnx(
    model: FPSegModel,
    config: FPSegConfig,
    out_dir: str | Path,
    input_mode: str = "squash",
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write encoder.onnx, decoder.onnx and then fpseg_onnx.json to `out_dir`; returns the manifest.

    A folder that already holds any of these files is refused unless `overwrite` (`--overwrite`). `opset` is
    one of OPSETS.
    """
    require_choice("input_mode", input_mode, INPUT_MODES)
    if opset not in OPSETS:
        raise ValueError(f"opset must be one of {', '.join(map(str, OPSETS))}, got {opset!r}")
    out = Path(out_dir)
    check_outputs(out, EXPORT_OUTPUTS, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / SIDECAR).unlink(missing_ok=True)  # until the new manifest is written, this is no export
    model = model.eval()
    size, grid = config.img_size, config.embedding_size
    prompt_size = model.prompt_encoder.prompt_size
    image = torch.randn(1, 3, size, size)
    embedding = torch.randn(1, EMBED_DIM, grid, grid)
    prompts = torch.randn(3, prompt_size, EMBED_DIM)
    graphs = {
        "encoder": (EncoderGraph(model), (image,), ["image"], ["image_embeddings"], None),
        "decoder": (DecoderGraph(model), (embedding, prompts), ["image_embeddings", "prompt_tokens"],
                    ["low_res_logits"], {"prompt_tokens": {0: "classes"}, "low_res_logits": {1: "classes"}}),
    }
    written = {}
    for role, (module, args, input_names, output_names, dynamic_axes) in graphs.items():
        written.update(_write_graph(role, out, module, args, input_names, output_names, opset, dynamic_axes))
    state = model.state_dict()
    sidecar = {
        "format": FORMAT,
        "encoder": config.encoder,
        "img_size": size,
        "embedding_size": grid,
        "low_res_size": 4 * grid,
        "prompt_size": prompt_size,
        "embed_dim": EMBED_DIM,
        "max_classes": MAX_CLASSES,
        "bank_classes": model.prompt_encoder.n_classes,
        "opset": opset,
        "ops": {role: graph_ops(out / name) for role, name in GRAPH_FILES.items()},
        "exporter": EXPORTER,
        "encoder_fingerprint": encoder_fingerprint(state),
        "decoder_fingerprint": decoder_fingerprint(state),
        "input_mode": input_mode,
        "decoder_output": "low_res_logits",
        "files": {role: file_entry(out / name) for role, name in written.items()},
        "inputs": {role: graph[2] for role, graph in graphs.items()},
        "fpseg_core_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(out / SIDECAR, json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def graph_ops(path: Path) -> list[str]:
    """The sorted op types of the ONNX graph at `path`, subgraphs (If / Loop bodies) included."""
    import onnx

    found: set[str] = set()
    graphs = [onnx.load(str(path), load_external_data=False).graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            found.add(node.op_type)
            graphs += [attribute.g for attribute in node.attribute if attribute.HasField("g")]
            graphs += list(chain.from_iterable(attribute.graphs for attribute in node.attribute))
    return sorted(found)


def _write_graph(role: str, out: Path, module: nn.Module, args: tuple, input_names: list[str],
                 output_names: list[str], opset: int, dynamic_axes: dict | None) -> dict[str, str]:
    """Export `module` into `out` as GRAPH_FILES[role]; returns {role: file name} for each file written (the
    graph, and for a graph over EXTERNAL_DATA_BYTES its weights).

    The export runs in a scratch folder inside `out`: for a model over 2 GiB torch writes every weight as a
    file of its own beside the graph. Such a graph is saved again with all its weights in one data file
    (DATA_FILES), which is moved in before the graph that refers to it; a self-contained graph replaces any
    data file an earlier (larger) export left.
    """
    import onnx

    name, data_role = GRAPH_FILES[role], f"{role}_data"
    with tempfile.TemporaryDirectory(prefix=".export.", dir=out) as scratch:
        staged = Path(scratch) / name
        _export(module, args, staged, input_names, output_names, opset, dynamic_axes)
        if len(os.listdir(scratch)) == 1 and staged.stat().st_size < EXTERNAL_DATA_BYTES:
            install_staged(scratch, [name], out)
            (out / DATA_FILES[data_role]).unlink(missing_ok=True)
            return {role: name}
        graph = onnx.load(str(staged))
        for loaded in os.listdir(scratch):  # the weights are in memory now: free their disk space first
            os.unlink(Path(scratch) / loaded)
        onnx.save_model(graph, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILES[data_role])
        del graph
        install_staged(scratch, [DATA_FILES[data_role], name], out)
    return {data_role: DATA_FILES[data_role], role: name}


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            opset: int, dynamic_axes: dict | None) -> None:
    # The TorchScript-based exporter: torch 2.13's dynamo exporter fails to decompose the CPU flash attention
    # that TinyViT's windowed attention runs on (a view of its output gets impossible strides).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice and tracer warnings about shape arithmetic
        torch.onnx.export(module.eval(), args, str(path), input_names=input_names, output_names=output_names,
                          opset_version=opset, dynamo=False, dynamic_axes=dynamic_axes)
