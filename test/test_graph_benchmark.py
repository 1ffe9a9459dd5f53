"""The graph benchmark's ROS-free half: per-camera metrics, process sampling, the peak search, the soak
recorder and the reports (fpseg_core/graph_benchmark)."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from fpseg_core.files import OutputExistsError
from fpseg_core.graph_benchmark import (
    CameraMeasurement,
    ProcessSampler,
    SoakRecorder,
    find_peak_rate,
    write_graph_report,
    write_soak_report,
)

MS = 1_000_000  # ns
S = 1_000_000_000  # ns
MIB = 2**20


def _no_nan(text: str) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


# --- metrics -------------------------------------------------------------------------------------------------

def test_latency_loss_and_rates_on_a_known_sequence() -> None:
    camera = CameraMeasurement(requested_rate_hz=5.0)
    for i in range(10):  # 10 frames at 5 Hz
        camera.sent(i * 200 * MS, i * 200 * MS + MS)
    for i, latency_ms in zip(range(0, 10, 2), (10, 20, 30, 40, 50), strict=True):  # every other one arrives
        camera.received(i * 200 * MS, i * 200 * MS + latency_ms * MS)
    summary = camera.summary(duration_s=2.0)
    assert summary.latency_ms == pytest.approx({"min": 10.0, "mean": 30.0, "p50": 30.0, "p95": 48.0, "max": 50.0})
    assert (summary.frames_sent, summary.frames_received, summary.frames_lost) == (10, 5, 5)
    assert summary.loss_fraction == 0.5
    assert summary.achieved_input_rate_hz == 5.0
    assert summary.delivered_rate_hz == 2.5
    assert summary.requested_rate_hz == 5.0
    assert summary.latency_percentiles_exact and summary.latency_samples == 5


def test_jitter_of_a_known_interval_sequence() -> None:
    camera = CameraMeasurement(requested_rate_hz=10.0, lost_after_s=10.0)
    arrivals_ms = np.cumsum([0, 100, 110, 90, 100])  # intervals 100, 110, 90, 100: mean 100
    for i, arrival in enumerate(arrivals_ms):
        camera.sent(i, 0)
        camera.received(i, int(arrival) * MS)
    summary = camera.summary(1.0)
    assert summary.jitter_ms == pytest.approx(math.sqrt((0 + 100 + 100 + 0) / 4))
    assert summary.jitter_max_ms == pytest.approx(10.0)


def test_steady_arrivals_have_no_jitter_and_one_interval_is_undefined() -> None:
    steady = CameraMeasurement(30.0)
    for i in range(5):
        steady.sent(i * 33 * MS, i * 33 * MS)
        steady.received(i * 33 * MS, i * 33 * MS + 5 * MS)
    assert steady.summary(1.0).jitter_ms == pytest.approx(0.0)
    two = CameraMeasurement(30.0)
    for i in range(2):
        two.sent(i, i * MS)
        two.received(i, i * MS + MS)
    assert two.summary(1.0).jitter_ms is None and two.summary(1.0).jitter_max_ms is None


def test_duplicate_unknown_and_late_outputs_are_counted_not_fatal() -> None:
    camera = CameraMeasurement(10.0, lost_after_s=1.0)
    camera.sent(1 * S, 1 * S)
    camera.received(1 * S, 1 * S + 50 * MS)
    camera.received(1 * S, 1 * S + 60 * MS)  # the same output twice
    camera.received(999, 1 * S + 70 * MS)  # never sent
    camera.sent(2 * S, 2 * S)
    camera.sent(4 * S, 4 * S)  # 2 s later: the frame stamped 2 s is now older than the horizon
    assert camera.pending == 1
    camera.received(2 * S, 4 * S + MS)  # its output arrives after all
    summary = camera.summary(3.0)
    assert (summary.frames_duplicate, summary.frames_unknown, summary.frames_late) == (1, 1, 1)
    assert summary.frames_received == 1
    assert summary.frames_lost == 2  # the late one, and the 4 s frame still waiting at the end
    assert summary.latency_ms["max"] == pytest.approx(50.0)  # neither the duplicate nor the late one counts


def test_pruning_bounds_the_bookkeeping_over_a_long_run() -> None:
    camera = CameraMeasurement(100.0, lost_after_s=0.5)
    for i in range(20_000):  # 200 s at 100 Hz; every third frame's output arrives 20 ms later
        t = i * 10 * MS
        camera.sent(t, t)
        if i % 3 == 0:
            camera.received(t, t + 20 * MS)
        assert camera.pending <= 51
        assert camera.remembered <= 3 * 51
    summary = camera.summary(200.0)
    assert summary.frames_received == len(range(0, 20_000, 3))
    assert summary.frames_lost == 20_000 - summary.frames_received
    assert summary.latency_ms["p95"] == pytest.approx(20.0)


def test_latency_reservoir_keeps_memory_bounded_and_extremes_exact() -> None:
    camera = CameraMeasurement(1000.0, lost_after_s=10.0, max_latency_samples=100)
    for i in range(1, 1001):
        camera.sent(i * MS, i * MS)
        camera.received(i * MS, i * MS + i * MS)  # latency i ms
    summary = camera.summary(1.0)
    assert summary.latency_samples == 100 and not summary.latency_percentiles_exact
    assert (summary.latency_ms["min"], summary.latency_ms["max"]) == (1.0, 1000.0)
    assert summary.latency_ms["mean"] == pytest.approx(500.5)
    assert 300 < summary.latency_ms["p50"] < 700  # a uniform sample of 1..1000


def test_nothing_received_gives_none_not_nan() -> None:
    camera = CameraMeasurement(15.0)
    camera.sent(0, 0)
    data = camera.summary(1.0).to_dict()
    assert data["latency_ms"] == dict.fromkeys(("min", "mean", "p50", "p95", "max"))
    assert data["jitter_ms"] is None and data["loss_fraction"] == 1.0
    _no_nan(json.dumps(data, allow_nan=False))
    assert CameraMeasurement(15.0).summary(1.0).loss_fraction is None
    with pytest.raises(ValueError, match="duration_s"):
        camera.summary(0.0)


# --- process sampling ----------------------------------------------------------------------------------------

# waits a moment (so the sampler sees it small), touches 200 MiB, says so, then holds it
ALLOCATE = ("import time; time.sleep(0.4); block = b'\\x01' * (200 << 20); print('allocated', flush=True); "
            "time.sleep(10)")


@contextlib.contextmanager
def _python(code: str) -> Iterator[subprocess.Popen]:
    """A Python child running `code` (stdout piped); on leaving, it and its children are killed and reaped."""
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as child:
        try:
            yield child
        finally:
            with contextlib.suppress(psutil.Error):
                for process in psutil.Process(child.pid).children(recursive=True):
                    process.kill()
            child.kill()


def _sample_while(pids: list[int], seconds: float = 0.0, until: subprocess.Popen | None = None) -> ProcessSampler:
    """Sample `pids` every 0.1 s for `seconds`, or until `until` prints a line and 0.3 s more."""
    sampler = ProcessSampler(pids, interval_s=0.1)
    sampler.start()
    if until is not None:
        assert until.stdout.readline().strip() == "allocated"
        seconds = 0.3
    time.sleep(seconds)
    sampler.stop()
    return sampler


def test_sampler_sees_a_child_allocate_200_mb() -> None:
    with _python(ALLOCATE) as child:
        sampler = _sample_while([child.pid], until=child)
    samples = sampler.samples
    assert len(samples) >= 4
    summary = sampler.summary()
    assert summary["rss_mib_max"] - samples[0][2] / MIB > 150
    assert summary["rss_mib_last"] == summary["rss_mib_max"]  # still held when sampling stopped
    assert summary["cpu_percent_max"] > 0 and summary["exited"] == []
    assert all(t1 > t0 for (t0, _, _), (t1, _, _) in itertools.pairwise(samples))


def test_sampler_counts_the_children_of_a_process() -> None:
    with _python(f"import subprocess, sys; subprocess.run([sys.executable, '-c', {ALLOCATE!r}])") as parent:
        sampler = _sample_while([parent.pid], until=parent)
    samples = sampler.samples
    assert max(s[2] for s in samples) - samples[0][2] > 150 * MIB


def test_a_process_exiting_mid_run_does_not_stop_the_sampler() -> None:
    missing = 2**22 + 12345  # above Linux's largest pid: no such process
    with _python("import time; time.sleep(0.3)") as short, _python("import time; time.sleep(3)") as long:
        sampler = _sample_while([short.pid, long.pid, missing], 1.2)
    summary = sampler.summary()
    exited = {e["pid"]: e["t_s"] for e in summary["exited"]}
    assert set(exited) == {short.pid, missing}
    assert any(t > exited[short.pid] for t, _, _ in sampler.samples)  # sampling went on over the other one
    assert len(summary["notes"]) == 2 and summary["rss_mib_last"] > 0


def test_sampler_stops_quietly_when_every_process_is_gone() -> None:
    with _python("pass") as child:
        child.wait()
    sampler = _sample_while([child.pid], 0.4)
    summary = sampler.summary()
    assert summary["samples"] == 0 and summary["rss_mib_max"] is None
    assert any("no process left" in note for note in summary["notes"])
    _no_nan(json.dumps(summary, allow_nan=False))


# --- peak search ---------------------------------------------------------------------------------------------

THRESHOLD_HZ = 23.5


def _loss(rate_hz: float) -> float:
    """No loss up to 23 Hz, then 10% per Hz: passes (<= 5%) up to 23.5 Hz."""
    return 0.0 if rate_hz < 23.0 else (rate_hz - 23.0) / 10.0


def test_peak_search_finds_a_known_threshold_within_its_resolution() -> None:
    search = find_peak_rate(_loss, 5.0, 60.0, max_loss=0.05, steps=6)
    resolution = (60.0 / 5.0) ** (1 / 2**6)
    assert THRESHOLD_HZ / resolution <= search.peak_rate_hz <= THRESHOLD_HZ < search.first_failing_rate_hz
    assert search.resolution_ratio == pytest.approx(resolution)
    assert len(search.trials) == 8 and [t.rate_hz for t in search.trials[:2]] == [5.0, 60.0]
    assert all(t.passed == (t.rate_hz <= THRESHOLD_HZ) for t in search.trials)
    assert not search.limited_by_search_range


def test_peak_search_edges() -> None:
    above = find_peak_rate(_loss, 5.0, 20.0)
    assert above.peak_rate_hz == 20.0 and above.limited_by_search_range and len(above.trials) == 2
    below = find_peak_rate(_loss, 30.0, 60.0)
    assert below.peak_rate_hz is None and not below.limited_by_search_range and len(below.trials) == 1
    broken = find_peak_rate(lambda rate: float("nan"), 5.0, 60.0)
    assert broken.peak_rate_hz is None
    data = broken.to_dict()
    assert data["trials"][0]["loss_fraction"] is None
    _no_nan(json.dumps(data, allow_nan=False))
    with pytest.raises(ValueError):
        find_peak_rate(_loss, 60.0, 5.0)


# --- soak ----------------------------------------------------------------------------------------------------

def _soak(rss_mib_at, seconds: float = 3600.0, every_s: float = 5.0, warmup_s: float = 300.0) -> SoakRecorder:
    recorder = SoakRecorder(warmup_s=warmup_s, window_s=300.0)
    for t in np.arange(0.0, seconds, every_s):
        recorder.sample(float(t), int(rss_mib_at(t) * MIB), 40.0 + t / 1000, dropped=int(t // 100), rejected=0,
                        failed=0)
    return recorder


def test_soak_slope_of_a_known_leak() -> None:
    noise = np.random.default_rng(0)
    recorder = _soak(lambda t: 500.0 + 6.0 * t / 60.0 + noise.normal(0.0, 2.0))
    assert len(recorder.samples) == 720
    trend = recorder.rss_slope_mib_per_min()
    assert trend.slope_mib_per_min == pytest.approx(6.0, abs=0.1)
    assert trend.intercept_mib == pytest.approx(500.0, abs=3.0)
    assert trend.samples == 720 - 60


def test_soak_slope_of_a_flat_noisy_series_and_warmup_exclusion() -> None:
    noise = np.random.default_rng(1)
    # a 200 MiB climb during the first 5 minutes (warm-up), then flat with noise
    recorder = _soak(lambda t: 300.0 + min(t, 300.0) / 300.0 * 200.0 + noise.normal(0.0, 5.0))
    assert abs(recorder.rss_slope_mib_per_min().slope_mib_per_min) < 0.1
    assert recorder.rss_slope_mib_per_min(warmup_s=0.0).slope_mib_per_min > 0.5  # the climb, if not excluded
    assert recorder.rss_slope_mib_per_min(warmup_s=4000.0) is None


def test_soak_floor_per_window_separates_a_sawtooth_from_a_creep() -> None:
    sawtooth = _soak(lambda t: 400.0 + (t % 300.0) / 10.0)  # climbs 30 MiB per window, then is freed
    assert {floor for _, floor in sawtooth.rss_floor_per_window()} == {400.0}
    assert sawtooth.to_dict()["rss_floor_creep_mib"] == 0.0
    creep = _soak(lambda t: 400.0 + (t % 300.0) / 10.0 + (t // 300.0))  # the floor rises 1 MiB per window
    floors = creep.rss_floor_per_window()
    assert [start for start, _ in floors] == [300.0 * i for i in range(12)]
    assert creep.to_dict()["rss_floor_creep_mib"] == pytest.approx(10.0)  # windows 1..11 after warm-up
    with pytest.raises(ValueError, match="time order"):
        creep.sample(0.0, 0, None, 0, 0, 0)


# --- reports -------------------------------------------------------------------------------------------------

def _camera(rate_hz: float, loss_every: int, latency_ms: float) -> dict:
    camera = CameraMeasurement(rate_hz)
    step = int(S / rate_hz)
    for i in range(int(rate_hz * 2)):
        camera.sent(i * step, i * step)
        if loss_every == 0 or i % loss_every:
            camera.received(i * step, i * step + int(latency_ms * MS))
    return camera.summary(2.0).to_dict()


def _results() -> dict:
    search = find_peak_rate(_loss, 5.0, 60.0)
    idle = ProcessSampler([1]).summary()  # never started: every number None
    rates = [{"rate_hz": r, "cameras": {"front": _camera(r, 0 if r < 23 else 3, 30 + r)}, "process": idle}
             for r in (30.0, 10.0, 20.0)]
    two = [{"rate_hz": r, "cameras": {"front": _camera(r, 0, 40 + r), "rear": _camera(r, 4, 45 + r)},
            "process": idle} for r in (10.0, 15.0)]
    silent = CameraMeasurement(5.0)
    silent.sent(0, 0)
    return {"configurations": [
        {"name": "1 camera", "cameras": 1, "nodes": 1, "rates": rates, "peak": search.to_dict()},
        {"name": "2 cameras, one node", "cameras": 2, "nodes": 1, "rates": two, "peak": None},
        {"name": "nothing arrives", "cameras": 1, "nodes": 1, "peak": None,
         "rates": [{"rate_hz": 5.0, "cameras": {"c": silent.summary(1.0).to_dict()}, "process": idle}]}],
        "settings": {"trial_s": 2.0, "weird": float("nan")}}


def _assert_png(path: Path) -> None:
    with pytest.importorskip("PIL.Image").open(path) as image:
        assert image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0
        image.load()  # decodes the whole image: a truncated file fails here


def test_graph_report_writes_valid_json_and_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    json_path, png_path = tmp_path / "graph.json", tmp_path / "graph.png"
    assert write_graph_report(_results(), json_path, png_path) == (json_path, png_path)
    report = _no_nan(json_path.read_text())
    assert {"configurations", "settings", "schema", "machine", "written"} <= report.keys()
    assert {"platform", "cpu_model", "logical_cores", "python", "torch"} <= report["machine"].keys()
    assert "loss_fraction" in report["schema"]["camera"] and "peak_rate_hz" in report["schema"]["peak"]
    assert report["settings"]["weird"] is None
    camera = report["configurations"][0]["rates"][0]["cameras"]["front"]
    assert {"achieved_input_rate_hz", "delivered_rate_hz", "frames_lost", "loss_fraction", "latency_ms",
            "jitter_ms", "jitter_max_ms"} <= camera.keys()
    assert report["configurations"][0]["peak"]["peak_rate_hz"] == pytest.approx(find_peak_rate(
        _loss, 5.0, 60.0).peak_rate_hz)
    assert json_path.read_text() == json.dumps(report, indent=2, sort_keys=True) + "\n"
    _assert_png(png_path)


def test_reports_refuse_to_overwrite_without_being_asked(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    json_path, png_path = tmp_path / "graph.json", tmp_path / "graph.png"
    png_path.write_bytes(b"not mine to replace")
    with pytest.raises(OutputExistsError):
        write_graph_report(_results(), json_path, png_path)
    assert not json_path.exists() and png_path.read_bytes() == b"not mine to replace"
    write_graph_report(_results(), json_path, png_path, overwrite=True)
    _assert_png(png_path)
    before = json_path.read_bytes(), png_path.read_bytes()
    with pytest.raises(OutputExistsError):
        write_graph_report(_results(), json_path, tmp_path / "other.png")
    assert (json_path.read_bytes(), png_path.read_bytes()) == before
    assert not (tmp_path / "other.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.json", "graph.png"]  # no temporary left


def test_graph_report_rejects_a_malformed_structure(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="configurations"):
        write_graph_report({"settings": {}}, tmp_path / "a.json", tmp_path / "a.png")
    with pytest.raises(ValueError, match="lacks"):
        write_graph_report({"configurations": [{"name": "x"}]}, tmp_path / "a.json", tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_soak_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    noise = np.random.default_rng(2)
    recorder = _soak(lambda t: 500.0 + 0.5 * t / 60.0 + noise.normal(0.0, 1.0))
    json_path, png_path = tmp_path / "soak.json", tmp_path / "soak.png"
    write_soak_report(recorder, {"rate_hz": 10.0, "backend": "onnxruntime"}, json_path, png_path)
    report = _no_nan(json_path.read_text())
    assert {"schema", "machine", "meta", "soak", "written"} <= report.keys()
    soak = report["soak"]
    assert len(soak["samples"]) == 720 and len(soak["rss_floor"]) == 12
    assert soak["rss_trend"]["slope_mib_per_min"] == pytest.approx(0.5, abs=0.05)
    assert soak["dropped"] == 35 and soak["latency_p95_ms_max"] == pytest.approx(40.0 + 3595 / 1000)
    _assert_png(png_path)
    before = json_path.read_bytes()
    with pytest.raises(OutputExistsError):
        write_soak_report(recorder, {}, json_path, tmp_path / "new.png")
    assert json_path.read_bytes() == before
    empty = tmp_path / "empty"
    write_soak_report(SoakRecorder(), {}, empty / "soak.json", empty / "soak.png")  # no samples yet: still valid
    assert _no_nan((empty / "soak.json").read_text())["soak"]["rss_trend"] is None
