"""Pure preprocessing shared by every encoder (in-process, Triton client, Triton's python backend).

Images: decode with Pillow → EXIF orientation → RGB → resize shortest side (bicubic) → centre crop → CLIP
mean/std, giving float32 ``[3, S, S]``; this matches transformers' ``CLIPImageProcessor`` to ~1e-6.
Two deliberate differences, both about inputs the reference mishandles: transparent pixels are composited
onto white (product cut-outs), and 16-bit greyscale is scaled to 8 bits instead of clipped.

Texts: the exported ``tokenizer.json`` through the ``tokenizers`` library (same ids as ``CLIPTokenizer``),
truncated to 77 tokens, and a batch padded to its longest member, not to 77.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.config import LimitsSettings
from pipeline.errors import InvalidInput
from pipeline.manifest import ImageSpec, TextSpec

_GREY_16 = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def decode_image(data: bytes, limits: LimitsSettings, *, name: str = "image") -> Image.Image:
    """Decode encoded image bytes into an RGB Pillow image, EXIF orientation applied.

    Raises InvalidInput (naming ``name``) for empty, unreadable, truncated, too large or oddly shaped images.
    The pixel-count check reads only the header, so a decompression bomb is refused before it is decoded.
    """
    if not data:
        raise InvalidInput(f"{name}: empty file")
    if len(data) > limits.max_image_bytes:
        raise InvalidInput(f"{name}: {len(data)} bytes is over the limit of {limits.max_image_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=limits.image_formats)
            width, height = opened.size
            if width * height > limits.max_image_pixels:
                raise InvalidInput(f"{name}: {width}x{height} pixels is over the limit of {limits.max_image_pixels}")
            if max(width, height) > limits.max_aspect_ratio * min(width, height):
                raise InvalidInput(f"{name}: aspect ratio {width}x{height} is over {limits.max_aspect_ratio}:1")
            opened.load()
            img = ImageOps.exif_transpose(opened)
    except InvalidInput:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidInput(f"{name}: too many pixels ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        allowed = ", ".join(limits.image_formats)
        raise InvalidInput(f"{name}: not an image in an accepted format ({allowed})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow signals unknown formats, truncation and corrupt data through these.
        raise InvalidInput(f"{name}: not a readable image ({exc})") from exc
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha over white, 16-bit grey scaled, CMYK/P/L converted."""
    if img.mode in _GREY_16 or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if img.mode != "F" or arr.max() > 1.0 else 1 / 255.0
        img = Image.fromarray(np.clip(arr / scale + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode != "RGB" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def image_to_tensor(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """RGB image → float32 ``[3, S, S]``: shortest side to S (bicubic), centre crop, scale, mean/std."""
    size = spec.size
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    arr = np.asarray(img, dtype=np.float32)[top : top + size, left : left + size]
    arr = arr * np.float32(1 / 255)
    arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_image_tensor(data: bytes, spec: ImageSpec, limits: LimitsSettings, *, name: str = "image") -> np.ndarray:
    """Encoded bytes → model input ``[3, S, S]``; raises InvalidInput naming ``name``."""
    return image_to_tensor(decode_image(data, limits, name=name), spec)


def check_text(text: str, limits: LimitsSettings, *, name: str = "text") -> str:
    """Refuse texts a query cannot be made of: not a string, empty after stripping, or over the char limit."""
    if not isinstance(text, str):
        raise InvalidInput(f"{name}: expected a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInput(f"{name}: empty text")
    if len(text) > limits.max_text_chars:
        raise InvalidInput(f"{name}: {len(text)} characters is over the limit of {limits.max_text_chars}")
    return text


@dataclass(frozen=True)
class TokenBatch:
    input_ids: np.ndarray  # int64 [B, L], L = longest in the batch (≤ max_length)
    attention_mask: np.ndarray  # int64 [B, L]


class TextTokenizer:
    """CLIP BPE from the exported ``tokenizer.json``; ids identical to transformers' ``CLIPTokenizer``."""

    def __init__(self, tokenizer_file: Path, spec: TextSpec) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_file))
        self._tok.no_padding()
        # Truncation counts the special tokens the post-processor adds: at most bos + 75 + eos.
        self._tok.enable_truncation(max_length=spec.max_length)
        self.spec = spec

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text (bos … eos), truncated to ``max_length``; no padding."""
        return [enc.ids for enc in self._tok.encode_batch(list(texts))]

    def pad(self, ids: Sequence[Sequence[int]]) -> TokenBatch:
        """Right-pad with the pad id to the longest sequence of this batch (not to max_length)."""
        longest = max((len(row) for row in ids), default=0)
        batch = np.full((len(ids), longest), self.spec.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids), longest), dtype=np.int64)
        for i, row in enumerate(ids):
            batch[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return TokenBatch(batch, mask)

    def __call__(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenise and pad a batch: ``input_ids`` and ``attention_mask`` as the text model takes them."""
        return self.pad(self.encode(texts))
