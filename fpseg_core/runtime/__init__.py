"""The ROS-free runtime behind the ROS 2 node: class switching, prompt loading, newest-frame worker, stats,
image message decoding and the parameter table. Nothing here imports rclpy."""
