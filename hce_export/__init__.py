"""HCE export: ONNX graphs with the pooled embedding as output, int8/fp16 variants, self-validation."""

from hce_serve import __version__  # the one version string of the distribution

__all__ = ["__version__"]
