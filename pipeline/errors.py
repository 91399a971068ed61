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


class Conflict(InvalidInput):
    """The request clashes with what exists (a key name already taken)."""


class PayloadTooLarge(InvalidInput):
    """A request body or an upload over its limit, refused before it is read in full."""


class UnsupportedMedia(InvalidInput):
    """An upload or a body of a kind the route does not take (not an image, not JSON or multipart)."""


class Unauthorized(PipelineError):
    """No API key, or a key that is unknown or revoked."""


class Forbidden(PipelineError):
    """A valid key whose scope does not cover the route."""


class Busy(PipelineError):
    """Other work holds what the request needs (a re-index running on the collection): retry later."""


class SourceError(PipelineError):
    """A catalog source (a SQL database, a MongoDB collection) is down or refused the query: the driver says why."""


class ServiceUnavailable(PipelineError):
    """The HTTP service cannot be reached or did not answer."""


# Wire codes and HTTP statuses of the family, most specific first: the service maps an error to its status and
# code, and the HTTP client maps the code back to the same class, so a face shows the same message either way.
WIRE: tuple[tuple[type[PipelineError], str, int], ...] = (
    (NotFound, "not_found", 404),
    (Conflict, "conflict", 409),
    (PayloadTooLarge, "payload_too_large", 413),
    (UnsupportedMedia, "unsupported_media", 415),
    (InvalidInput, "invalid_input", 422),
    (Unauthorized, "unauthorized", 401),
    (Forbidden, "forbidden", 403),
    (ModelMismatch, "model_mismatch", 503),
    (ModelError, "model_error", 503),
    (EncoderUnavailable, "encoder_unavailable", 503),
    (StoreUnavailable, "store_unavailable", 503),
    (Busy, "busy", 503),
    (ServiceUnavailable, "service_unavailable", 503),
    (SourceError, "source_error", 502),
    (PipelineError, "internal", 500),
)


def wire_code(exc: PipelineError) -> tuple[str, int]:
    """The (code, HTTP status) an error travels as."""
    return next((code, status) for cls, code, status in WIRE if isinstance(exc, cls))


def from_wire(code: str, message: str) -> PipelineError:
    """The error a wire code stands for (PipelineError for a code this version does not know)."""
    cls = next((cls for cls, c, _ in WIRE if c == code), PipelineError)
    return cls(message)
