"""`ros2 run fpseg_ros fpseg_graph_benchmark`: the fpseg node measured from the outside, in the ROS graph.

Starts the node processes of each configuration (one camera; two cameras in one node; two nodes, see
fpseg_core.graph_benchmark.plan), publishes synthetic rgb8 frames on every camera's input at fixed rates, and
measures what comes back on the label topics: delivered rate, frames lost, end-to-end latency (header stamp to
labels received, on this process's clock) and jitter, with the nodes' CPU and RSS sampled by psutil. Then, per
configuration, a peak search: the highest input rate with at most `--max-loss` of the frames lost. Writes
`<name>_graph.json` and `<name>_graph.png` (fpseg_core.graph_benchmark.report documents the keys).

`--soak-minutes N` instead runs the first configuration under a fixed overload (`--soak-rate`, one malformed
frame in `--malformed-every`) for N minutes, sampling RSS, the interval's latency p95 and the node's drop /
reject / fail counters every `--sample-s` seconds, and writes `<name>_soak.json` / `.png` with the RSS slope
after warm-up; with `--heap-profile` the node also traces its Python heap (FPSEG_HEAP_PROFILE) and the report
includes its top growth by line.

The publisher must not be the bottleneck: frames are built once, and each trial reports the input rate it
achieved beside the one asked for. Thin by design: measurement, peak search and reports are ROS-free.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from fpseg_core.errors import FPSegError
from fpseg_core.files import check_output
from fpseg_core.graph_benchmark import (
    CameraMeasurement,
    ProcessSampler,
    SoakRecorder,
    find_peak_rate,
    latency_stats,
    write_graph_report,
    write_soak_report,
)
from fpseg_core.graph_benchmark.plan import CONFIGURATIONS, Configuration, Stream, configurations
from fpseg_core.jobs.options import image_size_type
from fpseg_core.runtime.heap_probe import HEAP_PROFILE_ENV
from fpseg_core.runtime.image_codec import fill_image
from fpseg_ros.msg import SegmentationStats

NS_PER_S = 1_000_000_000
READY_TIMEOUT_S = 300.0  # model loading on a small CPU
STOP_TIMEOUT_S = 60.0
PAUSE_S = 2.0  # between trials: the node finishes what it holds
RESULTS = Path("benchmarks/results")
# What decides how frames travel (recorded in the report): e.g. Fast DDS needs config/fastdds_shm.xml for
# camera-sized best-effort frames between processes.
MIDDLEWARE_ENV = ("ROS_DISTRO", "RMW_IMPLEMENTATION", "FASTRTPS_DEFAULT_PROFILES_FILE", "CYCLONEDDS_URI",
                  "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY")


# ---------------------------------------------------------------------------------------------- the probe
class Probe(Node):
    """Publishes frames on each stream's input and records the outputs (labels, stats) per stream."""

    def __init__(self, streams: Sequence[Stream], frame: np.ndarray) -> None:
        super().__init__("fpseg_graph_benchmark")
        self.streams = list(streams)
        self._lock = threading.Lock()
        self._measurements: dict[str, CameraMeasurement] = {}
        self._interval_latencies: dict[str, list[float]] = {s.camera: [] for s in self.streams}
        self.latest_stats: dict[str, SegmentationStats] = {}
        self.outputs_seen: dict[str, int] = dict.fromkeys((s.camera for s in self.streams), 0)
        self._image_publishers = {}
        self._messages = {}
        self._malformed = {}
        for stream in self.streams:
            # Camera drivers publish sensor data best effort; the node subscribes the same way.
            self._image_publishers[stream.camera] = self.create_publisher(Image, stream.image_topic,
                                                                          qos_profile_sensor_data)
            self._messages[stream.camera] = fill_image(Image(), frame, "rgb8")
            self._messages[stream.camera].header.frame_id = stream.camera
            bad = fill_image(Image(), frame, "rgb8")
            bad.step = bad.step - 1  # malformed: the node rejects it (wrong step)
            self._malformed[stream.camera] = bad
            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self.create_subscription(Image, stream.labels_topic, partial(self._on_labels, stream.camera), reliable)
            self.create_subscription(SegmentationStats, stream.stats_topic, partial(self._on_stats, stream.camera),
                                     reliable)

    def connected(self) -> bool:
        """Every input has the node subscribed and every output has the node publishing."""
        return all(self._image_publishers[s.camera].get_subscription_count() > 0
                   and self.count_publishers(s.labels_topic) > 0 for s in self.streams)

    def measure(self, rate_hz: float, lost_after_s: float) -> None:
        """Start fresh measurements (one per stream) at `rate_hz`."""
        with self._lock:
            self._measurements = {s.camera: CameraMeasurement(rate_hz, lost_after_s) for s in self.streams}

    def publish_all(self, malformed: bool = False) -> None:
        """One frame on every stream, stamped now (the same stamp: the cameras are synchronised)."""
        now = time.time_ns()
        for stream in self.streams:
            msg = self._malformed[stream.camera] if malformed else self._messages[stream.camera]
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, NS_PER_S)
            self._image_publishers[stream.camera].publish(msg)
            if not malformed:
                with self._lock:
                    if stream.camera in self._measurements:
                        self._measurements[stream.camera].sent(now, time.time_ns())

    def summaries(self, duration_s: float) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {camera: m.summary(duration_s).to_dict() for camera, m in self._measurements.items()}

    def take_interval_latencies(self) -> list[float]:
        """Latencies (ms) received since the last call, all streams."""
        with self._lock:
            taken = [value for values in self._interval_latencies.values() for value in values]
            for values in self._interval_latencies.values():
                values.clear()
            return taken

    def _on_labels(self, camera: str, msg: Image) -> None:
        received = time.time_ns()
        stamp = msg.header.stamp.sec * NS_PER_S + msg.header.stamp.nanosec
        with self._lock:
            self.outputs_seen[camera] += 1
            self._interval_latencies[camera].append((received - stamp) / 1e6)
            if camera in self._measurements:
                self._measurements[camera].received(stamp, received)

    def _on_stats(self, camera: str, msg: SegmentationStats) -> None:
        self.latest_stats[camera] = msg


class Pacer:
    """Publishes on every stream at `rate_hz` from its own thread, on a fixed schedule (no drift)."""

    def __init__(self, probe: Probe, rate_hz: float, malformed_every: int = 0) -> None:
        self._probe, self._period = probe, 1.0 / rate_hz
        self._malformed_every = malformed_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fpseg-bench-pacer", daemon=True)
        self.ticks = 0

    def __enter__(self) -> Pacer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            self.ticks += 1
            malformed = self._malformed_every > 0 and self.ticks % self._malformed_every == 0
            self._probe.publish_all(malformed=malformed)
            delay = start + self.ticks * self._period - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)


# ---------------------------------------------------------------------------------------------- the nodes
class NodeProcesses:
    """The node processes of one configuration: started with their logs in `log_dir`, stopped with SIGINT."""

    def __init__(self, configuration: Configuration, log_dir: Path, env: dict[str, str]) -> None:
        self.configuration = configuration
        self._processes: list[subprocess.Popen] = []
        self._logs = []
        for index, node in enumerate(configuration.nodes):
            log = open(log_dir / f"{configuration.name}_node{index}.log", "wb")  # noqa: SIM115 (closed in stop)
            self._logs.append(log)
            self._processes.append(subprocess.Popen(node.command(), stdout=log, stderr=subprocess.STDOUT,
                                                    env=env, start_new_session=True))

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def check_running(self) -> None:
        for process in self._processes:
            if process.poll() is not None:
                raise RuntimeError(f"a node of {self.configuration.name} exited with status {process.returncode} "
                                   f"(see its log: {self._logs[self._processes.index(process)].name})")

    def stop(self) -> list[int | None]:
        """SIGINT each node, wait for it (then SIGKILL); the exit codes."""
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        codes = []
        for process in self._processes:
            try:
                codes.append(process.wait(STOP_TIMEOUT_S))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes.append(None)
        for log in self._logs:
            log.close()
        return codes


def _wait_ready(probe: Probe, nodes: NodeProcesses, say: Callable[[str], None]) -> None:
    """Until every node is connected and has segmented a first frame of every stream (at 1 Hz)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not probe.connected():
        nodes.check_running()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the nodes of {nodes.configuration.name} did not connect in {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.5)
    say(f"{nodes.configuration.name}: connected; waiting for first outputs")
    while not all(probe.outputs_seen.values()):
        nodes.check_running()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no output from {nodes.configuration.name} in {READY_TIMEOUT_S:.0f} s")
        probe.publish_all()
        time.sleep(1.0)


def _trial(probe: Probe, nodes: NodeProcesses, rate_hz: float, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up at `rate_hz`, then measure for `--duration` seconds; the rate entry of the report."""
    sampler = ProcessSampler(nodes.pids, interval_s=1.0)
    with Pacer(probe, rate_hz):
        time.sleep(args.warmup)
        probe.measure(rate_hz, args.lost_after)
        sampler.start()
        start = time.monotonic()
        time.sleep(args.duration)
    duration = time.monotonic() - start
    sampler.stop()  # CPU and memory while frames came in, not while the last outputs drain
    time.sleep(args.lost_after)  # the last frames' outputs have their time
    cameras = probe.summaries(duration)
    nodes.check_running()
    time.sleep(PAUSE_S)
    return {"rate_hz": rate_hz, "cameras": cameras, "process": sampler.summary()}


def _loss(entry: dict[str, Any]) -> float:
    sent = sum(c["frames_sent"] for c in entry["cameras"].values())
    lost = sum(c["frames_lost"] for c in entry["cameras"].values())
    return lost / sent if sent else float("nan")


def _line(name: str, entry: dict[str, Any]) -> str:
    cameras = entry["cameras"].values()
    p95 = max((c["latency_ms"]["p95"] or float("nan") for c in cameras), default=float("nan"))
    achieved = min(c["achieved_input_rate_hz"] for c in cameras)
    process = entry["process"]
    return (f"{name} @ {entry['rate_hz']:.2f} Hz (sent {achieved:.2f} Hz): loss {100 * _loss(entry):.1f} %, "
            f"latency p95 {p95:.0f} ms, CPU {process['cpu_percent_mean'] or 0:.0f} %, "
            f"RSS {process['rss_mib_max'] or 0:.0f} MiB")


@contextmanager
def _running(configuration: Configuration, frame: np.ndarray, log_dir: Path, env: dict[str, str],
             say: Callable[[str], None], exit_codes: list[int | None]) -> Iterator[tuple[Probe, NodeProcesses]]:
    """The configuration's nodes started and the probe spinning, both ready; on exit the nodes are stopped
    (their exit codes appended to `exit_codes`) and the probe destroyed."""
    nodes = NodeProcesses(configuration, log_dir, env)
    probe = Probe(configuration.streams, frame)
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        _wait_ready(probe, nodes, say)
        yield probe, nodes
    finally:
        exit_codes += nodes.stop()
        executor.shutdown()
        probe.destroy_node()


def _sweep(configuration: Configuration, frame: np.ndarray, args: argparse.Namespace, log_dir: Path,
           env: dict[str, str], say: Callable[[str], None]) -> dict[str, Any]:
    rates: list[dict[str, Any]] = []
    codes: list[int | None] = []
    with _running(configuration, frame, log_dir, env, say, codes) as (probe, nodes):

        def measure(rate_hz: float) -> float:
            rates.append(_trial(probe, nodes, rate_hz, args))
            say(_line(configuration.name, rates[-1]))
            return _loss(rates[-1])

        for rate in args.rates:
            measure(rate)
        peak = find_peak_rate(measure, args.peak_low, args.peak_high, args.max_loss, args.peak_steps)
    say(f"{configuration.name}: peak {peak.peak_rate_hz} Hz; node exit codes {codes}")
    return {"name": configuration.name, "cameras": len(configuration.streams), "nodes": len(configuration.nodes),
            "rates": rates, "peak": peak.to_dict(), "exit_codes": codes}


def _soak(configuration: Configuration, frame: np.ndarray, args: argparse.Namespace, log_dir: Path,
          env: dict[str, str], say: Callable[[str], None]) -> tuple[SoakRecorder, dict[str, Any]]:
    recorder = SoakRecorder(warmup_s=args.soak_warmup_minutes * 60.0, window_s=args.soak_window_minutes * 60.0)
    codes: list[int | None] = []
    with _running(configuration, frame, log_dir, env, say, codes) as (probe, nodes):
        processes = [psutil.Process(pid) for pid in nodes.pids]
        probe.measure(args.soak_rate, args.lost_after)
        start = time.monotonic()
        end = start + args.soak_minutes * 60.0
        with Pacer(probe, args.soak_rate, args.malformed_every):
            next_sample = start
            while time.monotonic() < end:
                next_sample += args.sample_s
                time.sleep(max(0.0, next_sample - time.monotonic()))
                nodes.check_running()
                stats = list(probe.latest_stats.values())
                latencies = probe.take_interval_latencies()
                recorder.sample(time.monotonic() - start, sum(p.memory_info().rss for p in processes),
                                latency_stats(latencies)["p95"], sum(s.dropped_frames for s in stats),
                                sum(s.rejected_frames for s in stats), sum(s.failed_frames for s in stats))
                if len(recorder.samples) % max(1, round(60 / args.sample_s)) == 0:
                    last = recorder.samples[-1]
                    say(f"soak {last.t_s / 60:.1f} min: RSS {last.rss_bytes / 2**20:.0f} MiB, p95 "
                        f"{last.latency_p95_ms or float('nan'):.0f} ms, dropped {last.dropped}, rejected "
                        f"{last.rejected}, failed {last.failed}")
        duration = time.monotonic() - start
        time.sleep(args.lost_after)
        cameras = probe.summaries(duration)
    return recorder, {"cameras": cameras, "exit_codes": codes}


# ------------------------------------------------------------------------------------------------ main
def _rate_list(text: str) -> list[float]:
    try:
        rates = [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates are positive numbers with commas, e.g. 2,5,30; got {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"rates must be positive, got {text!r}")
    return rates


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fpseg_graph_benchmark", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("node")
    model.add_argument("--checkpoint", help="the node's checkpoint parameter (a file or a cached weights name)")
    model.add_argument("--random-weights", choices=("mobilesam", "vit_b"),
                       help="no checkpoint: a full-size random network of this encoder, written to a temporary "
                            "checkpoint (timing only; labels are meaningless)")
    model.add_argument("--tiny", action="store_true", help="with --random-weights: a tiny network (smoke tests)")
    model.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                       help="another node parameter as --ros-args -p takes it, e.g. backend:=onnxruntime")
    model.add_argument("--classes", default="person,rider,car,truck,bus,motorcycle,bicycle,road,sidewalk",
                       help="active classes (default: the 9 of config/fpseg.yaml)")
    model.add_argument("--node-env", action="append", default=[], metavar="KEY=VALUE",
                       help="environment variable of the node processes, e.g. FPSEG_KEEP_FREED_MEMORY=0")
    run = parser.add_argument_group("run")
    run.add_argument("--configurations", default=",".join(CONFIGURATIONS),
                     help=f"comma-separated, of {', '.join(CONFIGURATIONS)} (default: all)")
    run.add_argument("--rates", type=_rate_list, default=[2.0, 5.0, 30.0], help="input rates per camera, Hz")
    run.add_argument("--image-size", type=image_size_type, default=(512, 1024), help="HEIGHTxWIDTH of the rgb8 frames")
    run.add_argument("--duration", type=float, default=30.0, help="seconds measured per trial")
    run.add_argument("--warmup", type=float, default=5.0, help="seconds published before each trial is measured")
    run.add_argument("--lost-after", type=float, default=5.0,
                     help="seconds after which a frame without labels counts as lost")
    run.add_argument("--max-loss", type=float, default=0.05, help="peak search: most frames lost (fraction)")
    run.add_argument("--peak-low", type=float, default=0.25, help="peak search: lowest rate, Hz")
    run.add_argument("--peak-high", type=float, default=8.0, help="peak search: highest rate, Hz")
    run.add_argument("--peak-steps", type=int, default=5, help="peak search: bisection steps")
    soak = parser.add_argument_group("soak (instead of the sweep)")
    soak.add_argument("--soak-minutes", type=float, default=0.0, help="run a soak of this many minutes")
    soak.add_argument("--soak-rate", type=float, default=17.0, help="input rate of the soak, Hz")
    soak.add_argument("--malformed-every", type=int, default=10, help="one malformed frame in N (0: none)")
    soak.add_argument("--sample-s", type=float, default=5.0, help="seconds between soak samples")
    soak.add_argument("--soak-warmup-minutes", type=float, default=5.0, help="left out of the RSS slope")
    soak.add_argument("--soak-window-minutes", type=float, default=5.0, help="windows of the RSS floor")
    soak.add_argument("--heap-profile", action="store_true",
                      help=f"the node traces its Python heap ({HEAP_PROFILE_ENV}); its top growth goes in the report")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=RESULTS, help=f"folder of the JSON and PNG (default {RESULTS})")
    out.add_argument("--name", default="mobilesam_cpu2", help="file name prefix: <name>_graph.json, <name>_soak.json")
    out.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def _node_parameters(args: argparse.Namespace, checkpoint: str) -> dict[str, Any]:
    parameters: dict[str, Any] = {"checkpoint": checkpoint, "classes": args.classes.split(","),
                                  "publish_color": False}
    for item in args.param:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"--param takes NAME:=VALUE, got {item!r}")
        parameters[name] = _yaml_value(value)
    return parameters


def _yaml_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _random_checkpoint(encoder: str, tiny: bool, folder: Path) -> str:
    """A published-format checkpoint of a random network (the node loads it like any other)."""
    import torch

    from fpseg_core.checkpoint import save_checkpoint
    from fpseg_core.cityscapes_labels import BANK33
    from fpseg_core.modeling.build import FPSegConfig, build_fpseg, tiny_config

    torch.manual_seed(0)
    config = tiny_config(encoder, len(BANK33)) if tiny else FPSegConfig(encoder, len(BANK33))
    return str(save_checkpoint(build_fpseg(config), config, list(BANK33), folder / f"random_{encoder}.pth"))


def _node_env(args: argparse.Namespace, scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    for item in args.node_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--node-env takes KEY=VALUE, got {item!r}")
        env[key] = value
    if args.heap_profile:
        env[HEAP_PROFILE_ENV] = str(scratch / "heap_profile.json")
    return env


def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> list[Path]:
    """The sweep (or the soak); the files written."""
    kind = "soak" if args.soak_minutes > 0 else "graph"
    json_path, png_path = args.out / f"{args.name}_{kind}.json", args.out / f"{args.name}_{kind}.png"
    for path in (json_path, png_path):
        check_output(path, args.overwrite)
    height, width = args.image_size
    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="fpseg_graph_benchmark_") as scratch_dir:
        scratch = Path(scratch_dir)
        if args.random_weights:
            checkpoint = _random_checkpoint(args.random_weights, args.tiny, scratch)
        elif args.checkpoint:
            checkpoint = args.checkpoint
        else:
            raise ValueError("give --checkpoint (a file or cached weights name) or --random-weights ENCODER")
        parameters = _node_parameters(args, checkpoint)
        env = _node_env(args, scratch)
        chosen = configurations(args.configurations.split(","), parameters)
        settings = {"image_size": [height, width], "encoding": "rgb8", "duration_s": args.duration,
                    "warmup_s": args.warmup, "lost_after_s": args.lost_after, "max_loss": args.max_loss,
                    "parameters": {k: v for k, v in parameters.items() if k != "checkpoint"},
                    "weights": f"random {args.random_weights}" if args.random_weights else str(args.checkpoint),
                    "node_env": {item.partition("=")[0]: item.partition("=")[2] for item in args.node_env},
                    "middleware": {name: os.environ.get(name) for name in MIDDLEWARE_ENV},
                    "command": " ".join(sys.argv)}
        log_dir = Path(args.out) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        if kind == "soak":
            recorder, outcome = _soak(chosen[0], frame, args, log_dir, env, say)
            heap = scratch / "heap_profile.json"
            meta = {"settings": {**settings, "rate_hz": args.soak_rate, "malformed_every": args.malformed_every,
                                 "minutes": args.soak_minutes, "configuration": chosen[0].name},
                    **outcome, "heap_profile": json.loads(heap.read_text()) if heap.is_file() else None}
            return list(write_soak_report(recorder, meta, json_path, png_path, args.overwrite))
        results = {"configurations": [_sweep(c, frame, args, log_dir, env, say) for c in chosen],
                   "settings": settings}
        results["memory"] = _memory_ratios(results["configurations"])
        return list(write_graph_report(results, json_path, png_path, args.overwrite))


def _memory_ratios(done: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak RSS of each configuration over its trials, and each over the one-camera node's."""
    peaks = {c["name"]: max((r["process"]["rss_mib_max"] or 0.0) for r in c["rates"]) for c in done if c["rates"]}
    base = peaks.get("one-camera")
    return {"rss_mib_max": peaks,
            "over_one_camera": {name: value / base for name, value in peaks.items()} if base else None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rclpy.init(args=[])  # our own arguments (e.g. --param engine_dir:=DIR) are not ROS arguments
    try:
        for path in run(args):
            print(f"wrote {path}")
    except (FPSegError, ValueError, RuntimeError, OSError) as exc:
        print(f"fpseg_graph_benchmark: error: {exc}", file=sys.stderr)
        return 2
    finally:
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
