"""fpseg_ros: the ROS 2 node around fpseg_core (rclpy is imported only by the node modules)."""
