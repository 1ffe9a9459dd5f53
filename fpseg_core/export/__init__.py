"""Deployment artefacts: ONNX export of the encoder and decoder graphs, TensorRT engine building."""
