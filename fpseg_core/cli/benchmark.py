"""`fpseg benchmark`: latency of image -> label image over class counts and prompt sizes, against the baseline.

For every (prompt size, number of classes) point the fast path (`FPSeg.segment` on the chosen backend) and
the baseline (`FPSeg.segment_baseline`: the published computation in PyTorch, all N logit maps upsampled to
full resolution, thresholded and fused afterwards) run alternately on the same image in this process, so
both see the same machine state. Reported: median and p95 per stage, the speed-up, the cost of one more
class (least-squares slope of the median total over the class counts), and the share of label pixels on
which both agree. Without --checkpoint the weights are random (timing only; the output says so).

With a --dtype other than fp32 the same weights also run at fp32 on --reference (default: torch for --backend
torch, else onnxruntime, the CPU fast path), alternating with the other pipelines: reported are the precision
of each graph, the speed-up over that fp32 reference and the share of label pixels on which both agree.
--backend openvino --dtype int8 runs an `fpseg quantize` folder (--engine-dir; its fp32 export is
--reference-engine-dir); with random weights the benchmark exports and quantizes the network itself,
calibrated on the benchmark image.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .._version import __version__
from ..backends.cpu_memory import keep_freed_memory
from ..constants import DEVICE_FORMS, FUSIONS, QUANTIZED_DTYPES, RUNTIME_DTYPES
from ..export.quantize import DECODER_PRECISIONS, DEFAULT_DECODER_PRECISION
from ..files import atomic_path, atomic_write_text, check_output
from ..jobs.options import device_type
from ..modeling.build import ENCODERS, FPSegConfig, tiny_config
from ..predictor import STAGES, FPSeg, Segmentation
from .common import REFERENCE_BACKENDS, add_backend_arguments, add_overwrite_argument

RANDOM_NOTE = "random weights (timing only; labels are meaningless)"
TOTAL = "total"
REFERENCE = "fp32_reference"
EXPORTED_BACKENDS = ("onnxruntime", "tensorrt", "openvino")  # what runs an export folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="latency vs number of classes and prompt size, fast path vs published baseline",
        description=" ".join(__doc__.split("\n\n")[1:3]), conflict_handler="resolve")
    parser.add_argument("--checkpoint", type=Path, help="weights to time (default: random weights)")
    parser.add_argument("--prompts", type=Path, help="prompt bank for a SAM / MobileSAM checkpoint")
    parser.add_argument("--encoder", choices=ENCODERS,
                        help="encoder of the random network (default mobilesam), or the one a checkpoint must have")
    parser.add_argument("--tiny", action="store_true", help="a tiny random network (smoke tests)")
    parser.add_argument("--device", type=device_type, default="cpu", help=f"{DEVICE_FORMS} (default: cpu)")
    add_backend_arguments(parser)
    parser.add_argument("--dtype", choices=RUNTIME_DTYPES, default="fp32",  # replaces the shared --dtype
                        help="torch: fp32 / bf16 / fp16; openvino: fp32 / bf16 / int8 (an `fpseg quantize` folder)")
    parser.add_argument("--reference", choices=REFERENCE_BACKENDS,
                        help="with --dtype other than fp32: the backend timed at fp32 on the same weights, for "
                             "the speed-up and the label agreement (default: torch for --backend torch, else "
                             "onnxruntime)")
    parser.add_argument("--reference-engine-dir", type=Path,
                        help="the fp32 export --reference runs (default: --engine-dir; needed with --dtype int8 "
                             "and --engine-dir)")
    parser.add_argument("--decoder", choices=DECODER_PRECISIONS, default=DEFAULT_DECODER_PRECISION,
                        help="with --dtype int8 and random weights: the decoder's precision in the folder the "
                             "benchmark quantizes, as `fpseg quantize --decoder` (default "
                             f"{DEFAULT_DECODER_PRECISION})")
    parser.add_argument("--classes", default="1,2,5,10,19,33", help="comma-separated class counts")
    parser.add_argument("--prompt-sizes", default="8,16,32,64", help="comma-separated prompt sizes")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point and pipeline")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per point and pipeline")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the published baseline (default: yes)")
    parser.add_argument("--fusion", choices=FUSIONS, default="argmax")
    parser.add_argument("--threads", type=int, help="torch / onnxruntime CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--plot", type=Path, help="write latency vs classes (PNG) here")
    add_overwrite_argument(parser)
    parser.set_defaults(func=run)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--{what} must be comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise ValueError(f"--{what} must list positive integers, got {text!r}")
    return values


def summarise(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per stage (and total): median and 95th percentile in milliseconds."""
    return {stage: {"median_ms": float(np.median([s[stage] for s in samples])),
                    "p95_ms": float(np.percentile([s[stage] for s in samples], 95))}
            for stage in (*STAGES, TOTAL)}


def per_class_cost(classes: list[int], totals: list[float]) -> float | None:
    """Least-squares slope (ms per class) of the median totals; None with fewer than two class counts."""
    if len(classes) < 2:
        return None
    return float(np.polyfit(classes, totals, 1)[0])


def _random_config(args: argparse.Namespace, prompt_size: int, n_classes: int) -> FPSegConfig:
    encoder = args.encoder or "mobilesam"
    if args.tiny:
        return tiny_config(encoder, n_classes, prompt_size)
    return FPSegConfig(encoder, n_classes, prompt_size)


def _load(args: argparse.Namespace, prompt_size: int, n_classes: int, engine_dir: Path | None) -> FPSeg:
    options = {"device": args.device, "fusion": args.fusion, "backend": args.backend, "engine_dir": engine_dir,
               "dtype": args.dtype}
    if args.checkpoint is not None:
        return FPSeg.from_checkpoint(args.checkpoint, prompts=args.prompts, encoder=args.encoder, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RANDOM_NOTE is printed once instead
        return FPSeg.random(_random_config(args, prompt_size, n_classes), seed=args.seed, **options)


def _export_for_random_weights(args: argparse.Namespace, prompt_size: int, n_classes: int, folder: Path) -> None:
    """ONNX graphs (and TensorRT engines) of the same random network the benchmark builds."""
    from ..backends.tensorrt_backend import build_engines
    from ..export.onnx_export import export_onnx

    reference = _load(argparse.Namespace(**{**vars(args), "backend": "torch", "dtype": "fp32"}), prompt_size,
                      n_classes, None)
    export_onnx(reference.model, _random_config(args, prompt_size, n_classes), folder)
    if args.backend == "tensorrt":
        build_engines(folder, folder, fp16=False, max_classes=n_classes)


def _engine_dirs(args: argparse.Namespace, prompt_size: int, n_classes: int, scratch: Path, image: np.ndarray,
                 progress: tqdm) -> tuple[Path | None, Path | None]:
    """(engine_dir of the timed backend, fp32 export of the reference or None without one).

    With random weights and no --engine-dir the network is exported (and for int8 quantized, calibrated on
    the benchmark image) to `scratch`; otherwise --engine-dir and --reference-engine-dir are used.
    """
    compare = args.dtype != "fp32"
    reference_needs_export = compare and args.reference in EXPORTED_BACKENDS
    if args.checkpoint is None and args.engine_dir is None and (args.backend in EXPORTED_BACKENDS
                                                               or reference_needs_export):
        export = scratch / f"p{prompt_size}"
        progress.write(f"exporting the random network with prompt size {prompt_size} to {export}")
        _export_for_random_weights(args, prompt_size, n_classes, export)
        if args.dtype not in QUANTIZED_DTYPES:
            return (export if args.backend in EXPORTED_BACKENDS else None), export
        from PIL import Image

        from ..export.quantize import quantize_export

        calibration = scratch / "calibration.png"
        Image.fromarray(image).save(calibration)
        progress.write(f"quantizing it to {args.dtype} (decoder {args.decoder}) on the benchmark image (random "
                       "weights: timing only)")
        quantize_export(export, [calibration], scratch / f"p{prompt_size}_{args.dtype}", decoder=args.decoder)
        return scratch / f"p{prompt_size}_{args.dtype}", export
    reference_dir = args.reference_engine_dir or (args.engine_dir if args.dtype not in QUANTIZED_DTYPES else None)
    if reference_needs_export and reference_dir is None:
        raise ValueError(f"--reference {args.reference} needs the fp32 export of these weights: pass "
                         "--reference-engine-dir (the --onnx folder given to `fpseg quantize`), or --reference torch")
    return args.engine_dir, reference_dir


def _time_point(model: FPSeg, image: np.ndarray, classes: list[str], args: argparse.Namespace,
                progress: tqdm, reference: FPSeg | None = None) -> dict[str, Any]:
    pipelines = {"fast": model.segment}
    if args.baseline:
        pipelines["baseline"] = model.segment_baseline
    if reference is not None:
        pipelines[REFERENCE] = reference.segment
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in pipelines}
    last: dict[str, Segmentation] = {}
    for run_index in range(args.warmup + args.repeats):
        for name, segment in pipelines.items():  # alternate, so both see the same machine state
            last[name] = segment(image, classes)
            if run_index >= args.warmup:
                samples[name].append(last[name].timings_ms)
            progress.update()
    point: dict[str, Any] = {name: summarise(runs) for name, runs in samples.items()}
    if args.baseline:
        point["speedup"] = point["baseline"][TOTAL]["median_ms"] / point["fast"][TOTAL]["median_ms"]
        point["labels_equal_fraction"] = float((last["fast"].labels == last["baseline"].labels).mean())
    if reference is not None:
        point["speedup_vs_fp32"] = point[REFERENCE][TOTAL]["median_ms"] / point["fast"][TOTAL]["median_ms"]
        point["labels_equal_fp32_fraction"] = float((last["fast"].labels == last[REFERENCE].labels).mean())
    return point


def run(args: argparse.Namespace) -> int:
    class_counts = _int_list(args.classes, "classes")
    if args.reference is None:
        args.reference = "torch" if args.backend == "torch" else "onnxruntime"
    prompt_sizes = _int_list(args.prompt_sizes, "prompt-sizes")
    if args.decoder != DEFAULT_DECODER_PRECISION and (args.dtype not in QUANTIZED_DTYPES or args.engine_dir
                                                      or args.checkpoint):
        raise ValueError(f"--decoder {args.decoder} applies to the folder the benchmark quantizes itself (--dtype "
                         "int8, random weights, no --engine-dir); for your own folder pass `fpseg quantize --decoder`")
    for output in filter(None, (args.json, args.plot)):
        check_output(output, args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)
    random_weights = args.checkpoint is None
    if random_weights:
        print(f"NOTE: {RANDOM_NOTE}", file=sys.stderr)
    image = np.random.default_rng(args.seed).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    pipelines = 1 + args.baseline + (args.dtype != "fp32")
    progress = tqdm(total=len(prompt_sizes) * len(class_counts) * (args.warmup + args.repeats) * pipelines,
                    unit="run", desc="benchmark")
    results: list[dict[str, Any]] = []
    backend_name = encoder_name = ""
    precision: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fpseg_benchmark_") as scratch:
        for prompt_size in prompt_sizes:
            engine_dir, reference_dir = _engine_dirs(args, prompt_size, max(class_counts), Path(scratch), image,
                                                     progress)
            model = _load(args, prompt_size, max(class_counts), engine_dir)
            reference = None
            if args.dtype != "fp32":
                reference = _load(argparse.Namespace(**{**vars(args), "backend": args.reference, "dtype": "fp32"}),
                                  prompt_size, max(class_counts), reference_dir if args.reference != "torch" else None)
            precision = getattr(model.backend, "precisions", {"encoder": args.dtype, "decoder": args.dtype})
            if model.bank.prompt_size != prompt_size or len(model.bank) < max(class_counts):
                raise ValueError(f"the bank has {len(model.bank)} classes of prompt size "
                                 f"{model.bank.prompt_size}; choose --prompt-sizes {model.bank.prompt_size} "
                                 f"and --classes up to {len(model.bank)}")
            backend_name, encoder_name = model.backend_name, model.bank.encoder
            for n in class_counts:
                point = _time_point(model, image, model.classes[:n], args, progress, reference)
                results.append({"prompt_size": prompt_size, "classes": n, **point})
                progress.write(_row(results[-1]))
    progress.close()
    report = {"meta": _meta(args, backend_name, encoder_name, random_weights, precision), "results": results,
              "per_class_ms": _per_class(results, prompt_sizes, args.baseline)}
    print(_table(report))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _per_class(results: list[dict[str, Any]], prompt_sizes: list[int], baseline: bool) -> dict[str, Any]:
    costs: dict[str, Any] = {}
    for prompt_size in prompt_sizes:
        points = [r for r in results if r["prompt_size"] == prompt_size]
        classes = [r["classes"] for r in points]
        entry = {name: per_class_cost(classes, [r[name][TOTAL]["median_ms"] for r in points])
                 for name in (("fast", "baseline") if baseline else ("fast",))}
        if baseline and entry["fast"] is not None and entry["baseline"]:
            entry["fast_over_baseline"] = entry["fast"] / entry["baseline"]
        costs[str(prompt_size)] = entry
    return costs


def _meta(args: argparse.Namespace, backend_name: str, encoder_name: str, random_weights: bool,
          precision: dict[str, str]) -> dict[str, Any]:
    versions = {"fpseg_core": __version__, "torch": torch.__version__}
    compare = args.dtype != "fp32"
    if "onnxruntime" in (backend_name, compare and args.reference):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    if "openvino" in (backend_name, compare and args.reference):
        import openvino

        versions["openvino"] = openvino.__version__
    return {
        "weights": RANDOM_NOTE if random_weights else str(args.checkpoint),
        "encoder": ("tiny " if args.tiny else "") + encoder_name,
        "backend": backend_name,
        "baseline": "FPSeg.segment_baseline: the published computation in PyTorch" if args.baseline else None,
        "device": args.device,
        "dtype": args.dtype,
        "precision": precision,
        "fp32_reference": f"{args.reference} fp32, same weights, same run" if compare else None,
        "keep_freed_memory": keep_freed_memory() if args.device == "cpu" else None,
        "threads": torch.get_num_threads(),
        "image": [args.height, args.width],
        "fusion": args.fusion,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"},
    }


def _row(result: dict[str, Any]) -> str:
    fast = result["fast"]
    text = (f"P={result['prompt_size']:>3} N={result['classes']:>3}  fast {fast[TOTAL]['median_ms']:8.1f} ms "
            f"(p95 {fast[TOTAL]['p95_ms']:8.1f}; enc {fast['encoder']['median_ms']:7.1f} dec "
            f"{fast['decoder']['median_ms']:7.1f} post {fast['postprocess']['median_ms']:6.1f})")
    if "baseline" in result:
        base = result["baseline"]
        text += (f"  baseline {base[TOTAL]['median_ms']:8.1f} ms (dec {base['decoder']['median_ms']:7.1f} post "
                 f"{base['postprocess']['median_ms']:6.1f})  x{result['speedup']:.2f}  "
                 f"equal labels {100 * result['labels_equal_fraction']:.3f}%")
    if REFERENCE in result:
        text += (f"  fp32 reference {result[REFERENCE][TOTAL]['median_ms']:8.1f} ms  x{result['speedup_vs_fp32']:.2f}  "
                 f"equal labels {100 * result['labels_equal_fp32_fraction']:.3f}%")
    return text


def _table(report: dict[str, Any]) -> str:
    meta = report["meta"]
    precision = ", ".join(f"{role} {p}" for role, p in meta["precision"].items())
    lines = [f"fpseg benchmark: {meta['encoder']}, backend {meta['backend']} on {meta['device']} ({precision}, "
             f"{meta['threads']} threads), image {meta['image'][0]}x{meta['image'][1]}, {meta['weights']}"
             + (f"; against {meta['fp32_reference']}" if meta["fp32_reference"] else ""),
             "median ms per image (image -> label image)", *(_row(r) for r in report["results"]),
             "cost of one more class (least-squares slope of the median totals):"]
    for prompt_size, entry in report["per_class_ms"].items():
        if entry["fast"] is None:
            continue
        line = f"  P={prompt_size:>3}: fast {entry['fast']:.1f} ms/class"
        if "fast_over_baseline" in entry:
            line += f", baseline {entry['baseline']:.1f} ms/class, fast/baseline {entry['fast_over_baseline']:.2f}"
        lines.append(line)
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Median latency vs number of classes, one line per prompt size (baseline dashed, same colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = report["meta"]
    figure, axes = plt.subplots(figsize=(8, 5))
    prompt_sizes = sorted({r["prompt_size"] for r in report["results"]})
    for colour, prompt_size in zip(plt.cm.viridis(np.linspace(0, 0.9, len(prompt_sizes))), prompt_sizes,
                                   strict=True):
        points = [r for r in report["results"] if r["prompt_size"] == prompt_size]
        classes = [r["classes"] for r in points]
        axes.plot(classes, [r["fast"][TOTAL]["median_ms"] for r in points], "o-", color=colour,
                  label=f"fast, prompt size {prompt_size}")
        if "baseline" in points[0]:
            axes.plot(classes, [r["baseline"][TOTAL]["median_ms"] for r in points], "s--", color=colour,
                      alpha=0.7, label=f"baseline, prompt size {prompt_size}")
        if REFERENCE in points[0]:
            axes.plot(classes, [r[REFERENCE][TOTAL]["median_ms"] for r in points], "^:", color=colour,
                      alpha=0.7, label=f"{meta['fp32_reference'].split(',')[0]}, prompt size {prompt_size}")
    axes.set_xlabel("number of classes")
    axes.set_ylabel("median latency per image [ms]")
    axes.set_title(f"{meta['encoder']}, {meta['backend']} {meta['dtype']} on {meta['device']} "
                   f"({meta['threads']} threads), "
                   f"{meta['image'][0]}x{meta['image'][1]}\n{meta['weights']}", fontsize=9)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)
