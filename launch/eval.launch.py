"""Evaluate the fpseg node on Cityscapes replayed from a bag: the segmentation node (segment.launch.py) with
the 19 Cityscapes benchmark classes active, and the fpseg_eval node scoring its labels.

    fpseg bag-from-cityscapes ~/cityscapes --split val --with-gt --out ~/bags/cityscapes_val
    ros2 launch fpseg_ros eval.launch.py checkpoint:=$HOME/fpseg/fpseg_mobilesam_cityscapes.pth
    ros2 bag play ~/bags/cityscapes_val --clock 100

Both nodes use the bag's clock (use_sim_time, fed by `--clock`), so the latency in ~/stats is measured
from each frame's stamp. The report is written to `report_dir` when the launch is stopped (Ctrl-C), or at
any time with `ros2 service call /fpseg_eval/write_report std_srvs/srv/Trigger`.
"""

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description import LaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, SetParameter
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from fpseg_core.cityscapes_labels import TRAIN_ID_NAMES
from fpseg_core.replay.conventions import GT_TOPIC, IMAGE_TOPIC

# After Ctrl-C, launch sends SIGTERM to a node still running this long after its SIGINT (launch's default: 5 s),
# and SIGKILL 5 s later: time enough for fpseg_eval's final report of a long run (it defers SIGTERM; SIGKILL
# would lose the report).
FINAL_REPORT_TIMEOUT_S = "30"


def generate_launch_description() -> LaunchDescription:
    def arg(name: str) -> LaunchConfiguration:
        return LaunchConfiguration(name)

    segment = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("fpseg_ros"), "launch",
                                                            "segment.launch.py"])),
        launch_arguments={name: arg(name) for name in ("image", "checkpoint", "prompts", "backend",
                                                       "classes")}.items(),
    )
    evaluator = Node(
        package="fpseg_ros",
        executable="fpseg_eval",
        name="fpseg_eval",
        parameters=[{"report_dir": ParameterValue(arg("report_dir"), value_type=str),
                     "title": ParameterValue(arg("title"), value_type=str),
                     "report_every": ParameterValue(arg("report_every"), value_type=int)}],
        remappings=[(GT_TOPIC, arg("gt"))],
        output="screen",
        emulate_tty=True,
        sigterm_timeout=FINAL_REPORT_TIMEOUT_S,
    )
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value=IMAGE_TOPIC, description="camera images (from the bag)"),
        DeclareLaunchArgument("gt", default_value=GT_TOPIC, description="ground-truth labelId images (mono8)"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="checkpoint file (empty: from segment.launch.py's params_file)"),
        DeclareLaunchArgument("prompts", default_value="", description="prompt bank .safetensors (optional)"),
        DeclareLaunchArgument("backend", default_value="",
                              description="auto, tensorrt, onnxruntime or torch (empty: from params_file)"),
        DeclareLaunchArgument("classes", default_value=",".join(TRAIN_ID_NAMES),
                              description="active classes (default: the 19 Cityscapes benchmark classes)"),
        DeclareLaunchArgument("report_dir", default_value="fpseg_eval",
                              description="folder for results.json / results.md / confusion.png"),
        DeclareLaunchArgument("title", default_value="fpseg node on Cityscapes", description="report title"),
        DeclareLaunchArgument("report_every", default_value="100",
                              description="rewrite the report (marked partial) every N matched frames; 0 = off"),
        DeclareLaunchArgument("use_sim_time", default_value="true",
                              description="run both nodes on the bag's clock (play with --clock)"),
        SetParameter(name="use_sim_time", value=arg("use_sim_time")),
        segment,
        evaluator,
    ])
