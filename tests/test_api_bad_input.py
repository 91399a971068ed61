"""Bad input at the HTTP boundary: each gets a clear 4xx with the error body, nothing is lost, and the
service keeps answering (never a 500, never a traceback)."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from tests.service import error_message, jpeg


@pytest.fixture(scope="module")
def http(api_service, api_keys):
    with api_service.client(api_keys["write"]) as client:
        yield client
    assert 'status="500"' not in httpx.get(f"{api_service.url}/metrics").text
    assert httpx.get(f"{api_service.url}/health/ready").status_code == 200


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('{"text": "red mug"', "JSON"),
        ('{"text": 5}', "text: Input should be a valid string"),
        ('{"text": "red mug", "top_k": "many"}', "top_k"),
        ('{"text": "red mug", "filters": {"colour": "red"}}', "filters.colour: Extra inputs are not permitted"),
        ('{"text": "red mug", "topk": 3}', "topk: Extra inputs are not permitted"),
        ('{"text": "red mug", "top_k": 0}', "top_k"),
        ('{"text": "red mug", "top_k": 5000}', "top_k"),
        ('{"text": "red mug", "top_k": 500}', "top_k must be between 1 and 100"),
        ('{"text": "   "}', "query: empty text"),
        ('{"text": "red mug", "min_score": 3}', "min_score"),
        ("[1, 2]", "body"),
    ],
)
def test_malformed_or_wrong_json_is_422(http, body, fragment):
    r = http.post("/v1/search/text", content=body, headers={"content-type": "application/json"})
    assert fragment in error_message(r, 422)


def test_a_body_without_a_key_is_refused_before_it_is_read(api_service):
    big = b"{" * (20 * 1024 * 1024)
    r = httpx.post(f"{api_service.url}/v1/search/text", content=big, headers={"content-type": "application/json"})
    assert "API key is required" in error_message(r, 401)


def test_unparseable_bodies_are_422(http):
    r = http.post("/v1/search/text", content=b'{"text": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert error_message(r, 422)
    r = http.post("/v1/search/text", content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert error_message(r, 422)


def test_a_10000_character_query_is_refused_not_truncated(http):
    assert "10000 characters is over the limit of 1000" in error_message(
        http.post("/v1/search/text", json={"text": "word " * 2000}), 422
    )


def test_a_30_mb_upload_is_413_before_it_is_read(http):
    big = b"\xff\xd8" + b"\0" * (30 * 1024 * 1024)
    r = http.post("/v1/search/image", files={"file": ("big.jpg", big, "image/jpeg")})
    assert "over the limit" in error_message(r, 413)

    def chunks():  # no Content-Length: the limit holds while the body streams in
        yield b"--x\r\nContent-Disposition: form-data; name=file; filename=a.jpg\r\n\r\n"
        for _ in range(30):
            yield b"\0" * (1024 * 1024)

    r = http.post("/v1/search/image", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert "over the limit" in error_message(r, 413)


def test_non_images_are_415_or_422(http):
    r = http.post("/v1/search/image", files={"file": ("a.txt", b"hello", "text/plain")})
    assert "text/plain is not an image" in error_message(r, 415)
    r = http.post("/v1/search/image", files={"file": ("a.jpg", b"\xff\xd8\xff\xe0 not a jpeg", "image/jpeg")})
    assert "query image" in error_message(r, 422)
    ico = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(ico, "ICO")  # a real image in a format outside the allow-list
    r = http.post("/v1/search/image", files={"file": ("a.ico", ico.getvalue(), "image/x-icon")})
    assert "accepted format (JPEG, PNG, WEBP, GIF, BMP, TIFF)" in error_message(r, 422)
    r = http.post("/v1/search/image", content=b"raw bytes", headers={"content-type": "text/plain"})
    assert error_message(r, 415)
    r = http.post("/v1/search/image", files={"photo": ("a.jpg", jpeg(), "image/jpeg")})
    assert "unknown form field" in error_message(r, 422)
    r = http.post("/v1/search/image", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, data={"top_k": "x"})
    assert "top_k" in error_message(r, 422)
    r = http.post("/v1/search/image", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, data={"filters": "{bad"})
    assert "filters" in error_message(r, 422)
    deep = {"filters": "[" * 5000}  # nesting deeper than any parser should follow
    assert "filters" in error_message(http.post("/v1/search/image", files={"file": ("a.jpg", jpeg(), "image/jpeg")},
                                                data=deep), 422)  # fmt: skip
    for bad in ({"min_score": "nan"}, {"min_score": "5"}, {"top_k": "0"}):
        r = http.post("/v1/search/image", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, data=bad)
        assert next(iter(bad)) in error_message(r, 422)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://example.com/a.jpg", "http(s) URLs"),
        ("file:///etc/passwd", "http(s) URLs"),
        ("http://127.0.0.1:9/a.jpg", "private, loopback or reserved"),
        ("http://localhost/a.jpg", "private, loopback or reserved"),
        ("http://10.1.2.3/a.jpg", "private, loopback or reserved"),
        ("http://[::1]/a.jpg", "private, loopback or reserved"),
        ("http://169.254.169.254/latest/meta-data", "private, loopback or reserved"),
        ("http://[::ffff:127.0.0.1]/a.jpg", "private, loopback or reserved"),
        ("http://[2002:7f00:1::]/a.jpg", "private, loopback or reserved"),
    ],
)
def test_urls_are_http_and_public_only(http, url, fragment):
    assert fragment in error_message(http.post("/v1/search/image", json={"url": url}), 422)
    assert fragment in error_message(http.post("/v1/rank", json={"query_image_url": url, "candidates": ["a", "b"]}),
                                     422)  # fmt: skip
    row = {"name": "x", "images": [url]}
    assert fragment in error_message(http.put("/v1/products/url-test", json=row), 422)
    assert error_message(http.get("/v1/products/url-test"), 404)  # nothing half-written


@pytest.mark.parametrize("pid", ["$where", '{"$gt": ""}', "a.b", "a..b", "[/x]", "nope"])
def test_odd_or_unknown_ids_are_404(http, pid):
    from urllib.parse import quote

    seg = quote(pid, safe="")
    assert "unknown product id" in error_message(http.get(f"/v1/products/{seg}/similar"), 404)
    assert "unknown product id" in error_message(http.get(f"/v1/products/{seg}"), 404)
    assert "unknown product id" in error_message(http.delete(f"/v1/products/{seg}"), 404)


def test_bad_product_rows_are_422_and_leave_nothing(http):
    cases = [
        ({"name": "neg", "price": -3, "images": ["https://example.com/a.jpg"]}, "price"),
        ({"name": "no images", "images": []}, "images"),
        ({"name": "extra", "colour": "red", "images": ["https://example.com/a.jpg"]}, "colour"),
        ({"id": "other", "name": "x", "images": ["https://example.com/a.jpg"]}, "differs"),
        ({"name": "bad uri", "images": ["data:image/jpeg;base64,@@@"]}, "base64"),
    ]
    for row, fragment in cases:
        assert fragment in error_message(http.put("/v1/products/bad-row", json=row), 422)
    assert error_message(http.get("/v1/products/bad-row"), 404)
    assert error_message(http.post("/v1/products/batch", json={"products": []}), 422)


def test_list_and_similar_query_params_are_checked(http):
    assert "colour" in error_message(http.get("/v1/products/mug-red-0/similar", params={"colour": "red"}), 422)
    assert "lmit" in error_message(http.get("/v1/products", params={"lmit": 5}), 422)
    assert error_message(http.get("/v1/products", params={"limit": 0}), 422)
    assert error_message(http.get("/v1/products/mug-red-0/similar", params={"top_k": -1}), 422)
    assert error_message(http.get("/v1/products/mug-red-0/similar", params={"min_price": "cheap"}), 422)
