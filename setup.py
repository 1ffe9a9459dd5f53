"""pip install of fpseg_ros without ROS: installs the ROS-free `fpseg_core` library and the `fpseg` CLI.

colcon builds the same tree as an ament_cmake package (see CMakeLists.txt); this file is for pip only.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="fpseg_ros",
    version=re.search(r'__version__ = "([^"]+)"', Path(__file__).with_name("fpseg_core").joinpath(
        "_version.py").read_text(encoding="utf-8"))[1],
    description="FPSeg promptable, class-flexible semantic segmentation (SAM / MobileSAM) for ROS 2",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["fpseg_core", "fpseg_core.*", "fpseg_ros", "fpseg_ros.*"]),
    install_requires=[
        # 2.13.0 satisfies this; pin torch==2.13.0 yourself first on CPU-only machines.
        "torch>=2.1",
        "numpy>=1.24",
        "pillow>=9.0",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "pyyaml>=6.0",
    ],
    extras_require={
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1"],
        # TensorRT 8.6 to 10.x (11 is refused until strongly typed builds exist). Not for Jetson: pip has no
        # TensorRT for it; use JetPack's python3-libnvinfer from a `python3 -m venv --system-site-packages` venv.
        "tensorrt": ["tensorrt>=8.6,<11"],
        # OpenVINO on the CPU (fp32 / bf16 / int8); nncf writes the int8 folders of `fpseg quantize`.
        "openvino": ["openvino>=2026.4", "nncf>=3.4"],
        "bag": ["rosbags>=0.10", "mcap>=1.1"],
        "plot": ["matplotlib>=3.7"],
        # fpseg_graph_benchmark / soak: CPU and memory of the node processes
        "benchmark": ["psutil>=5.9", "matplotlib>=3.7"],
        "test": [
            "pytest>=7.4",
            "hypothesis>=6.80",
            "catkin_pkg>=0.5",  # validates package.xml as colcon / rosdep do (test_ros_package.py)
            "ruff>=0.4",
            "onnx>=1.15",
            "onnxruntime>=1.17",
            "onnxscript>=0.1",
            "openvino>=2026.4",
            "nncf>=3.4",
            "rosbags>=0.10",
            "mcap>=1.1",
            "matplotlib>=3.7",
            "psutil>=5.9",
            "cityscapesScripts>=2.2",
            # Test oracles: the official SAM and MobileSAM code. timm 0.6.13 (needed by mobile_sam) is
            # installed by .ci/run with --no-deps because its metadata pulls torchvision.
            "segment-anything==1.0",
            "mobilesam-mirror==1.0.0",
            "huggingface-hub",
        ],
    },
    entry_points={"console_scripts": ["fpseg=fpseg_core.cli.main:main"]},
)
