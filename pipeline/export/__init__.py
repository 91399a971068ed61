"""Model export: checkpoint → ONNX (FP32, FP16, INT8) → Triton model repository.

The only package that imports torch and transformers, and only inside functions.
"""
