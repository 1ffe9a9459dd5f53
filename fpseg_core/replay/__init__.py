"""Replay and evaluation through rosbag2 without ROS: Cityscapes -> bag, bag -> frames, stamp pairing of the
node's labels with ground truth, and offline evaluation of a bag (needs the `bag` extra: rosbags, mcap)."""
