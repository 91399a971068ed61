"""Multimodal product search: CLIP encoders (ONNX / Triton), Qdrant vectors, MongoDB metadata."""

__version__ = "0.1.0"
