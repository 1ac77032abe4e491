"""The ONNX opsets export-onnx supports: constants the CLI's help shows without importing torch."""

DEFAULT_OPSET = 11  # ByteTrack's export
MIN_OPSET = 11
MAX_OPSET = 20  # newest opset of torch's TorchScript exporter (the dynamo exporter needs onnxscript, not a dependency)
