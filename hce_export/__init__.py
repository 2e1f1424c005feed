"""HCE export: ONNX graphs with the pooled embedding as output, int8/fp16 variants, self-validation."""

__version__ = "0.1.0"
