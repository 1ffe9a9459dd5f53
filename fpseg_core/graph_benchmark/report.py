"""The graph benchmark's reports: a JSON document and a PNG, each written atomically.

`write_graph_report(results, json_path, png_path)` takes the rate sweep of one or more configurations:

    {"configurations": [                       # one per graph set-up, e.g. "1 camera", "2 nodes"
        {"name": str,                          # its label in the plot
         "cameras": int, "nodes": int,         # input streams, and node processes serving them
         "rates": [                            # one entry per input rate tried (any order)
             {"rate_hz": float,                # requested input rate per camera (Hz)
              "cameras": {camera_name: CameraSummary.to_dict()},   # metrics.py documents its keys
              "process": ProcessSampler.summary()}],               # process.py documents its keys
         "peak": PeakSearch.to_dict() or None}],                   # peak.py documents its keys
     "settings": {...}}                        # how the run was made: trial length, image size, backend...

and writes it back with `schema` ({format, and the docstrings documenting every key: this one, metrics.py's,
process.py's, peak.py's}, so the file explains itself), `machine` (see `machine_info`) and `written` (local
date and time) added; keys sorted, indent 2, NaN-free (undefined numbers
are null). The PNG has two panels over the input rate (Hz), one line per configuration: the end-to-end p95
latency (ms) of its worst camera at each rate, and the frame loss (%) pooled over its cameras
(100 x sum lost / sum sent); each configuration's peak rate is a dotted vertical line in its colour, and the
loss panel draws the peak search's max_loss threshold.

`write_soak_report(soak, meta, json_path, png_path)` writes {"schema" (format, this and soak.py's docstrings),
"machine", "written", "meta": meta,
"soak": SoakRecorder.to_dict()} (soak.py documents its keys) and a PNG: RSS (MiB) over time with the fitted
trend after warm-up and the per-window floor, and the interval p95 latency (ms) over time.

Both refuse an existing output (either of the two) unless `overwrite=True`, before writing anything; the PNG
is drawn first, so a missing matplotlib leaves no JSON behind either.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from .._version import __version__
from ..files import atomic_path, atomic_write_text, check_output
from . import metrics as _metrics
from . import peak as _peak
from . import process as _process
from . import soak as _soak
from ._common import json_safe
from .soak import SECONDS_PER_MINUTE, SoakRecorder

# The "schema" entry of each report: a format name and the docstrings that document its keys.
GRAPH_SCHEMA = {"format": "fpseg-graph-benchmark/1", "report": __doc__, "camera": _metrics.__doc__,
                "process": _process.__doc__, "peak": _peak.__doc__}
SOAK_SCHEMA = {"format": "fpseg-soak/1", "report": __doc__, "soak": _soak.__doc__}
CONFIGURATION_KEYS = ("name", "cameras", "nodes", "rates")
PNG_DPI = 110
PLOT_HINT = "the graph benchmark's plots need matplotlib: pip install 'fpseg_ros[plot]'"


def machine_info() -> dict[str, Any]:
    """Where the benchmark ran: platform, CPU model (/proc/cpuinfo), cores, Python, torch and fpseg_core versions.

    torch's version is read from its package metadata (importing torch is not needed, and not done).
    """
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_model": _cpu_model(),
            "logical_cores": os.cpu_count(), "python": platform.python_version(), "torch": _torch_version(),
            "fpseg_core": __version__}


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _torch_version() -> str | None:
    if "torch" in sys.modules:
        return str(getattr(sys.modules["torch"], "__version__", None))
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def write_graph_report(results: Mapping[str, Any], json_path: Path, png_path: Path,
                       overwrite: bool = False) -> tuple[Path, Path]:
    """Write the rate sweep `results` (structure: module docstring) as JSON and as the two-panel PNG."""
    configurations = results.get("configurations")
    if not isinstance(configurations, list):
        raise ValueError("results needs a 'configurations' list (see fpseg_core.graph_benchmark.report)")
    for configuration in configurations:
        missing = [key for key in CONFIGURATION_KEYS if key not in configuration]
        if missing:
            raise ValueError(f"configuration {configuration.get('name', '?')!r} lacks {', '.join(missing)}")
    return _write({**results, "schema": GRAPH_SCHEMA}, json_path, png_path, overwrite, _draw_sweep)


def write_soak_report(soak: SoakRecorder, meta: Mapping[str, Any], json_path: Path, png_path: Path,
                      overwrite: bool = False) -> tuple[Path, Path]:
    """Write a soak run (`meta`: how it was run, free-form) as JSON and as the RSS / latency PNG."""
    document = {"schema": SOAK_SCHEMA, "meta": dict(meta), "soak": soak.to_dict()}
    return _write(document, json_path, png_path, overwrite, _draw_soak)


def _write(document: dict[str, Any], json_path: Path, png_path: Path, overwrite: bool,
           draw: Callable[[Any, dict[str, Any]], None]) -> tuple[Path, Path]:
    json_path, png_path = check_output(json_path, overwrite), check_output(png_path, overwrite)
    document = json_safe({**document, "machine": machine_info(), "written": time.strftime("%Y-%m-%d %H:%M:%S")})
    text = json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"
    _save_figure(png_path, lambda figure: draw(figure, document))
    atomic_write_text(json_path, text)
    return json_path, png_path


def _save_figure(path: Path, draw: Callable[[Any], None]) -> None:
    """Draw on a fresh Agg figure (no pyplot: no global state, safe off the main thread) and save it atomically."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(PLOT_HINT) from exc
    figure = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(figure)
    draw(figure)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=PNG_DPI, format="png")


def _rate_point(entry: Mapping[str, Any]) -> tuple[float, float | None, float | None]:
    """(rate_hz, worst camera's p95 latency in ms, pooled loss in %) of one rate entry."""
    cameras = list(entry.get("cameras", {}).values())
    p95s = [c["latency_ms"]["p95"] for c in cameras if c.get("latency_ms", {}).get("p95") is not None]
    sent = sum(c.get("frames_sent", 0) for c in cameras)
    lost = sum(c.get("frames_lost", 0) for c in cameras)
    return float(entry["rate_hz"]), max(p95s) if p95s else None, 100.0 * lost / sent if sent else None


def _draw_sweep(figure: Any, document: Mapping[str, Any]) -> None:
    import matplotlib

    latency_axes, loss_axes = figure.subplots(1, 2)
    colours = matplotlib.colormaps["tab10"]
    thresholds = set()
    for index, configuration in enumerate(document["configurations"]):
        colour = colours(index % colours.N)
        points = sorted(_rate_point(entry) for entry in configuration["rates"])
        label = f"{configuration['name']} ({configuration['cameras']} cam, {configuration['nodes']} node)"
        for axes, column in ((latency_axes, 1), (loss_axes, 2)):
            shown = [(p[0], p[column]) for p in points if p[column] is not None]
            if shown:
                axes.plot(*zip(*shown, strict=True), "o-", color=colour, label=label)
        peak = configuration.get("peak") or {}
        if peak.get("peak_rate_hz") is not None:
            bound = " (search limit)" if peak.get("limited_by_search_range") else ""
            for axes in (latency_axes, loss_axes):
                axes.axvline(peak["peak_rate_hz"], color=colour, linestyle=":",
                             label=f"peak {configuration['name']}: {peak['peak_rate_hz']:.2g} Hz{bound}"
                             if axes is loss_axes else None)
        if peak.get("max_loss") is not None:
            thresholds.add(100.0 * peak["max_loss"])
    for threshold in sorted(thresholds):
        loss_axes.axhline(threshold, color="grey", linestyle="--", linewidth=0.8,
                          label=f"max loss {threshold:g}%")
    latency_axes.set_ylabel("end-to-end latency p95 [ms] (worst camera)")
    loss_axes.set_ylabel("frame loss [%] (all cameras)")
    for axes in (latency_axes, loss_axes):
        axes.set_xlabel("input rate per camera [Hz] (log scale)")
        axes.set_xscale("log")  # the rates span two decades (e.g. 0.25 to 30 Hz)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7)
    figure.suptitle(f"fpseg graph benchmark: {document.get('machine', {}).get('cpu_model') or ''}", fontsize=9)


def _draw_soak(figure: Any, document: Mapping[str, Any]) -> None:
    soak = document["soak"]
    rss_axes, latency_axes = figure.subplots(1, 2)
    samples = soak["samples"]
    minutes = [s["t_s"] / SECONDS_PER_MINUTE for s in samples]
    rss_axes.plot(minutes, [s["rss_mib"] for s in samples], "-", color="tab:blue", linewidth=1, label="RSS")
    floors = soak["rss_floor"]
    if floors:
        starts = [f["window_start_s"] / SECONDS_PER_MINUTE for f in floors]
        values = [f["rss_floor_mib"] for f in floors]
        rss_axes.step([*starts, minutes[-1]], [*values, values[-1]], where="post", color="tab:green",
                      label=f"floor per {soak['window_s'] / SECONDS_PER_MINUTE:g} min")
    trend = soak["rss_trend"]
    if trend is not None:
        fitted = [m for m in minutes if m * SECONDS_PER_MINUTE >= soak["warmup_s"]]
        ends = [fitted[0], fitted[-1]]
        rss_axes.plot(ends, [trend["intercept_mib"] + trend["slope_mib_per_min"] * m for m in ends], "--",
                      color="tab:red", label=f"fit after warm-up: {trend['slope_mib_per_min']:+.3f} MiB/min")
    if soak["warmup_s"] > 0:
        rss_axes.axvspan(0, soak["warmup_s"] / SECONDS_PER_MINUTE, color="grey", alpha=0.15, label="warm-up")
    latency = [(m, s["latency_p95_ms"]) for m, s in zip(minutes, samples, strict=True)
               if s["latency_p95_ms"] is not None]
    if latency:
        latency_axes.plot(*zip(*latency, strict=True), "-", color="tab:orange", linewidth=1)
    rss_axes.set_ylabel("RSS [MiB]")
    latency_axes.set_ylabel("end-to-end latency p95 per interval [ms]")
    for axes in (rss_axes, latency_axes):
        axes.set_xlabel("time [min]")
        axes.grid(alpha=0.3)
    rss_axes.legend(fontsize=7)
    latency_axes.set_ylim(bottom=0)
