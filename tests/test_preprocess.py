"""Preprocessing parity with transformers (CLIPImageProcessor, CLIPTokenizer) and bad-input handling."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.config import LimitsSettings
from pipeline.errors import InvalidInput
from pipeline.manifest import ImageSpec, TextSpec
from pipeline.preprocess import (
    TextTokenizer,
    check_text,
    decode_image,
    image_to_tensor,
    load_image_tensor,
    to_rgb,
)
from tests.images import encode, noise_image

LIMITS = LimitsSettings()
SPEC = ImageSpec()


def _reference_pixels(processor, img: Image.Image) -> np.ndarray:
    return processor(images=img, return_tensors="np")["pixel_values"][0]


@pytest.mark.parametrize("size", [(224, 224), (640, 480), (480, 640), (225, 1000), (100, 60), (1, 3), (1200, 223)])
def test_rgb_matches_clip_image_processor(reference, size):
    _, _, processor = reference
    img = noise_image(*size, seed=sum(size))
    ours = load_image_tensor(encode(img), SPEC, LIMITS)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _reference_pixels(processor, img), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1"])
def test_other_modes_match_reference_after_rgb_conversion(reference, mode):
    _, _, processor = reference
    img = noise_image(320, 240, mode, seed=3)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    data = encode(img, fmt, quality=95) if fmt == "JPEG" else encode(img)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    ours = load_image_tensor(data, SPEC, LIMITS)
    np.testing.assert_allclose(ours, _reference_pixels(processor, decoded.convert("RGB")), atol=1e-5, rtol=0)


def test_rgba_is_composited_on_white(reference):
    _, _, processor = reference
    img = noise_image(300, 300, "RGBA", seed=4)
    ours = load_image_tensor(encode(img), SPEC, LIMITS)
    on_white = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img).convert("RGB")
    np.testing.assert_allclose(ours, _reference_pixels(processor, on_white), atol=1e-5, rtol=0)
    clear = Image.new("RGBA", (50, 50), (0, 0, 0, 0))  # fully transparent black → pure white
    assert np.asarray(to_rgb(clear)).min() == 255


def test_16_bit_grey_is_scaled_not_clipped():
    grey = np.full((64, 64), 32768, np.uint16)  # mid-grey in 16 bits
    rgb = np.asarray(to_rgb(Image.fromarray(grey)))
    assert rgb.shape == (64, 64, 3) and abs(int(rgb[0, 0, 0]) - 128) <= 1


def test_exif_orientation_is_applied():
    img = noise_image(200, 100, seed=5)  # landscape pixels, EXIF says rotate 90°: the photo is portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(img, "JPEG", exif=exif.tobytes()), LIMITS)
    assert decoded.size == (100, 200)


def test_image_tensor_is_contiguous_chw():
    out = image_to_tensor(noise_image(300, 224), SPEC)
    assert out.flags.c_contiguous and out.shape == (3, 224, 224)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"definitely not an image", "not an image"),
        (encode(noise_image(64, 64), "JPEG")[:200], "not a readable image"),
        (encode(noise_image(64, 64), "PNG")[:-30], "not a readable image"),
    ],
)
def test_bad_image_bytes_raise_invalid_input(data, message):
    with pytest.raises(InvalidInput, match=message):
        decode_image(data, LIMITS, name="upload.jpg")


def test_decompression_bomb_refused_before_decoding():
    # An 8000x8000 white PNG is ~60 KB on disk and 192 MB decoded: our configurable limit (40 MP) refuses it.
    bomb = encode(Image.new("L", (8000, 8000), 255))
    with pytest.raises(InvalidInput, match=r"upload.png: 8000x8000 pixels is over the limit of 40000000"):
        decode_image(bomb, LIMITS, name="upload.png")
    # Past Pillow's own threshold (2 x 89 MP) Pillow refuses at open; still a clean InvalidInput.
    huge = encode(Image.new("1", (20000, 20000), 1))
    with pytest.raises(InvalidInput, match=r"upload.png: .*pixels"):
        decode_image(huge, LimitsSettings(max_image_pixels=10**9), name="upload.png")


def test_byte_size_and_aspect_limits():
    with pytest.raises(InvalidInput, match="bytes is over the limit"):
        decode_image(encode(noise_image(64, 64)), LimitsSettings(max_image_bytes=100))
    with pytest.raises(InvalidInput, match="aspect ratio"):
        decode_image(encode(Image.new("RGB", (4000, 10))), LIMITS)


# --- text -----------------------------------------------------------------------------------------------

TEXTS = [
    "a red mug",
    "Blue   Striped T-Shirt",
    "café naïve résumé",
    "Ünïcödé ÀÉÎÕÜ déjà vu",
    "party 🎉 time 😀 ✓",
    "مرحبا بالعالم",
    "北京 東京",
    "it's the shopper's choice, isn't it?",
    "   ",
    "\t\n",
    "x",
    "word " * 200,  # far over 77 tokens
    "unseenbytes ĳ ß ﬁ Ω",
]


@pytest.fixture(scope="module")
def tokenizer(model_repository):
    from pipeline.manifest import load_manifest

    manifest = load_manifest(model_repository)
    return TextTokenizer(model_repository / manifest.text.tokenizer_file, manifest.text)


@pytest.mark.parametrize("text", TEXTS)
def test_token_ids_match_clip_tokenizer(reference, tokenizer, text):
    _, clip_tok, _ = reference
    expected = clip_tok(text, truncation=True, max_length=77)["input_ids"]
    assert tokenizer.encode([text])[0] == expected


def test_batch_padded_to_longest_not_77(reference, tokenizer):
    _, clip_tok, _ = reference
    batch = tokenizer(["red mug", "a blue striped cotton t-shirt for summer"])
    expected = clip_tok(["red mug", "a blue striped cotton t-shirt for summer"], padding=True, return_tensors="np")
    assert batch.input_ids.shape[1] < 77
    np.testing.assert_array_equal(batch.input_ids, expected["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, expected["attention_mask"])
    assert batch.input_ids.dtype == np.int64


def test_long_text_truncated_to_77_with_eos(tokenizer):
    ids = tokenizer.encode(["word " * 5000])[0]
    assert len(ids) == 77 and ids[-1] == tokenizer.spec.eos_token_id and ids[0] == tokenizer.spec.bos_token_id


def test_check_text_refuses_empty_and_huge():
    with pytest.raises(InvalidInput, match="empty text"):
        check_text(" \n\t ", LIMITS)
    with pytest.raises(InvalidInput, match="over the limit"):
        check_text("a" * 20_001, LIMITS)
    assert check_text("a" * 10_000, LIMITS)  # a 10,000-character query is fine: truncated to 77 tokens later


def test_text_spec_defaults():
    assert TextSpec(pad_token_id=1, bos_token_id=0, eos_token_id=1).max_length == 77
