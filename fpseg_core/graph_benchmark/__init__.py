"""The ROS-free half of the graph benchmark: per-camera latency / loss / jitter, process CPU and memory, the
peak-rate search, the soak recorder, and the JSON + PNG reports (the rclpy half publishes and subscribes).

Layer: a job (like evaluation/); imports only the ground layer (files, _version), numpy, psutil and, inside
the plotting functions, matplotlib.
"""

from .metrics import CameraMeasurement, CameraSummary, latency_stats
from .peak import PeakSearch, Trial, find_peak_rate
from .process import ProcessSampler
from .report import machine_info, write_graph_report, write_soak_report
from .soak import RssTrend, SoakRecorder, SoakSample

__all__ = ["CameraMeasurement", "CameraSummary", "PeakSearch", "ProcessSampler", "RssTrend", "SoakRecorder",
           "SoakSample", "Trial", "find_peak_rate", "latency_stats", "machine_info", "write_graph_report",
           "write_soak_report"]
