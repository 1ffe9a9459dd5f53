"""The options of `fpseg eval`; config/eval.yaml documents every key."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..constants import BACKENDS, RUNTIME_DTYPES
from ..data.sampling import P_NEG_MAX
from ..jobs.options import doc, option

# The reference evaluation: the checkpoint itself in PyTorch at fp32 (what `fpseg eval` always ran).
REFERENCE_BACKEND, REFERENCE_DTYPE = "torch", "fp32"


@dataclass
class EvalConfig:
    """`fpseg eval`: class-wise binary IoU and the Cityscapes 19-class mIoU of a checkpoint + bank."""

    data: str = option("", "dataset root (Cityscapes layout, or a custom images/ + masks/ folder)")
    dataset: str = option("cityscapes", "dataset kind: cityscapes or custom")
    split: str = option("val", "split to evaluate")
    checkpoint: str = option("", "SAM / MobileSAM / FPSeg / fpseg_ros checkpoint")
    encoder: str | None = option(None, "refuse a checkpoint of another encoder")
    prompts: str | None = option(None, "prompt bank (.safetensors); default: the checkpoint's own")
    force_prompts: bool = option(False, "use a bank tuned for another decoder anyway")
    embeddings: str | None = option(None, "precomputed embeddings of the split (default: encoded into "
                                          "<out>/embeddings, resumable)")
    input_mode: str = option("squash", "squash (FPSeg) or letterbox (SAM) when encoding here (no --embeddings)")
    classes: list[str] | None = field(default=None, metadata=doc(
        "classes for the binary IoU (default: every bank class the dataset has labels for)"))
    samples_per_class: int = option(500, "binary-IoU examples per class (the paper: 500)")
    p_neg_max: float = option(P_NEG_MAX, "at most this share of a class's examples lack the class")
    miou: bool = option(True, "compute the Cityscapes 19-class mIoU over the split (Cityscapes only)")
    threshold: float = option(0.0, "a class is present where its logit > this (mIoU label images)")
    max_images: int | None = option(None, "mIoU over the first N images only (quick looks)")
    save_predictions: bool = option(False, "write the mIoU label images as <out>/predictions/<city>/"
                                           "<stem>_pred_labelIds.png (scorable with `fpseg eval-labels`)")
    seed: int = option(0, "seed of the sampled binary-IoU examples")
    out: str = option("runs/eval", "report folder: results.json, results.md, confusion.png")
    batch_size: int = option(16, "examples per decoder pass (binary IoU) / images per encoder pass")
    device: str = option("cpu", "cpu, cuda or cuda:N")
    backend: str = option(REFERENCE_BACKEND, f"where the network runs: {', '.join(BACKENDS)}; torch at fp32 is "
                                             "the reference; another backend or dtype encodes the split itself "
                                             "(no --embeddings) into <out>/embeddings-<backend>-<dtype>[-<export>]")
    engine_dir: str | None = option(None, "folder written by `fpseg export-onnx` (and `fpseg build-engine`), or "
                                          "by `fpseg quantize` for dtype int8; for every backend but torch")
    dtype: str = option(REFERENCE_DTYPE, f"precision, one of {', '.join(RUNTIME_DTYPES)}: torch fp32 / bf16 / fp16 "
                                         "(fp16 on CUDA), openvino fp32 / bf16, or int8 on an `fpseg quantize` "
                                         "folder; onnxruntime and tensorrt take fp32 (their precision is the "
                                         "export's / engine's)")
    num_workers: int = option(4, "data-loading worker processes (0: in the main process)")
    progress: bool = option(True, "show progress bars")
