"""rcl_interfaces descriptors from the ROS-free parameter tables (fpseg_core.runtime.parameters and
fpseg_core.replay.parameters), for both nodes."""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from fpseg_core.runtime.parameters import ParameterSpec


def descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """The descriptor rclpy declares `spec` with: description, constraints, read-only flag and ranges."""
    result = ParameterDescriptor(
        description=spec.description,
        additional_constraints=spec.constraints,
        read_only=spec.read_only,
        dynamic_typing=spec.dynamic_typing,
    )
    if spec.integer_range:
        low, high = spec.integer_range
        result.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
    if spec.float_range:
        low, high = spec.float_range
        result.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
    return result
