"""The project's small error family. Each carries a message meant for the person at the other end."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: anything the CLI or UI shows as a one-line message instead of a traceback."""


class InvalidInput(PipelineError):
    """The caller's input (an image, a text, an id, a catalog row) cannot be used as given."""


class NotFound(InvalidInput):
    """An id that names nothing (an unknown product)."""


class ModelError(PipelineError):
    """A model source or an exported repository is missing, incomplete or not what it claims to be."""


class ModelMismatch(ModelError):
    """Two parts disagree on the model: a server's tensors vs the manifest, a collection vs the encoder."""


class EncoderUnavailable(PipelineError):
    """The encoder backend (Triton server, onnxruntime session) cannot answer right now."""


class StoreUnavailable(PipelineError):
    """A store (Qdrant, MongoDB) cannot be reached."""
