"""Start the fpseg node.

    ros2 launch fpseg_ros segment.launch.py image:=/camera/image_raw \
        checkpoint:=$HOME/fpseg/fpseg_mobilesam_cityscapes.pth classes:=road,person

Parameters come from `params_file` (default: this package's config/fpseg.yaml); the backend, checkpoint,
prompts, classes, cameras and autostart arguments override it when they are not empty. The node is a lifecycle node:
with autostart (the default) it configures and activates itself; `autostart:=false` leaves it unconfigured for
a lifecycle manager (or `ros2 lifecycle set`). `image` is remapped onto the node's
`image` input, and `<image>/compressed` onto `image/compressed` (used with compressed_input: true).
`respawn:=true` restarts the node (after RESPAWN_DELAY_S) whenever it exits while launch is not shutting down,
e.g. with status 1 after its inference thread died.
"""

from typing import List  # noqa: UP035 (launch's type table holds typing.List)

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from fpseg_core.class_names import parse_class_list

OVERRIDES = ("backend", "checkpoint", "prompts")
RESPAWN_DELAY_S = 2.0


def _fpseg_node(context, *_args, **_kwargs):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    # launch_ros reads plain strings in a parameter dict as YAML (a path '2024' would become an int, a class
    # 'on' a bool): give each its type.
    overrides = {name: ParameterValue(arg(name), value_type=str) for name in OVERRIDES if arg(name)}
    for name in ("classes", "cameras"):
        if arg(name):
            overrides[name] = ParameterValue(parse_class_list(arg(name)), value_type=List[str])  # noqa: UP006 (launch's type table holds typing.List)
    if arg("autostart"):
        overrides["autostart"] = arg("autostart") == "true"
    parameters = [arg("params_file")] if arg("params_file") else []
    if overrides:  # an empty dict would become an empty ros__parameters file
        parameters.append(overrides)
    image = arg("image")
    return [
        LifecycleNode(  # Humble's LifecycleNode requires name and namespace
            package="fpseg_ros",
            executable="fpseg_node",
            name="fpseg",
            namespace=arg("namespace"),
            parameters=parameters,
            remappings=[("image", image), ("image/compressed", f"{image}/compressed")],
            output="screen",
            emulate_tty=True,
            respawn=arg("respawn").lower() == "true",
            respawn_delay=RESPAWN_DELAY_S,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="image",
                              description="input sensor_msgs/Image topic (its /compressed twin for compressed input)"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([FindPackageShare("fpseg_ros"), "config",
                                                                  "fpseg.yaml"]),
                              description="node parameters (YAML); empty for the node's built-in defaults"),
        DeclareLaunchArgument("backend", default_value="",
                              description="auto, tensorrt, onnxruntime or torch (empty: from params_file)"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="checkpoint file (empty: from params_file)"),
        DeclareLaunchArgument("prompts", default_value="",
                              description="prompt bank .safetensors (empty: from params_file)"),
        DeclareLaunchArgument("classes", default_value="",
                              description="active classes, e.g. road,person (empty: from params_file)"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="several cameras in one node, e.g. front,rear: <camera>/image in (in the "
                                          "node's namespace; `image` is then not used), ~/<camera>/labels etc. out "
                                          "(empty: from params_file, default one camera)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("autostart", default_value="", choices=["", "true", "false"],
                              description="configure and activate at start (empty: from params_file, default true); "
                                          "false: wait for a lifecycle manager"),
        DeclareLaunchArgument("respawn", default_value="false", choices=["true", "false"],
                              description="restart the node whenever it exits unasked (true on a robot)"),
        OpaqueFunction(function=_fpseg_node),
    ])
