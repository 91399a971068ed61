"""Images that arrive inside a request (``data:`` URIs in a product) are kept under the service's upload
folder, named by their SHA-256, so the product refers to a file like any catalog image does."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import tempfile
from pathlib import Path

from PIL import Image

from pipeline.catalog import is_url
from pipeline.config import LimitsSettings
from pipeline.errors import InvalidInput, StoreUnavailable
from pipeline.preprocess import decode_image

_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def store_data_uri(uri: str, folder: Path, limits: LimitsSettings, name: str) -> str:
    """Decode a base64 ``data:`` URI, check it is an image within the limits, keep it; returns its path."""
    header, comma, payload = uri.partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise InvalidInput(f"{name}: a data URI must look like data:image/jpeg;base64,<data>")
    if len(payload) > limits.max_image_bytes * 4 // 3 + 4:
        raise InvalidInput(f"{name}: over the limit of {limits.max_image_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{name}: not valid base64 ({exc})") from exc
    decode_image(data, limits, name=name)  # refuses anything that is not an allowed, sane image
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format
    digest = hashlib.sha256(data).hexdigest()[:32]
    path = folder / f"{digest}.{_EXT.get(fmt or '', 'img')}"
    if path.exists():
        return str(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")  # unique: concurrent twins do not collide
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreUnavailable(f"cannot keep {name} under {folder} ({exc.strerror or exc})") from exc
    return str(path)


def image_ref(ref: str, folder: Path, limits: LimitsSettings, local: bool, name: str) -> str:
    """How a request's image reference is stored: URLs as they are, data URIs as kept files, and file
    paths only from the service's own user (the local token), who could read them anyway."""
    if is_url(ref):
        return ref
    if ref.startswith("data:"):
        return store_data_uri(ref, folder, limits, name)
    if local and Path(ref).is_absolute():
        return ref
    raise InvalidInput(f"{name}: images must be http(s) URLs or data: URIs (base64)")
