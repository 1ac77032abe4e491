"""Deployable artifacts: ONNX export (with reidctl metadata) and TensorRT engines."""
