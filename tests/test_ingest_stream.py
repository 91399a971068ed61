"""The bulk ingest path (``IngestService.upsert_stream``) against a real image server on loopback, the test
mongod and both vector indexes: same outcomes and vectors as ``upsert`` batch by batch, retries on what may
pass and none on what will not, the per-host download limit, and a consumer that stops midway."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from pipeline.schemas import Outcome, Product
from pipeline.stack import open_stack
from tests.conftest import make_settings
from tests.images import encode, noise_image

FAST_RETRIES = {"retries": 3, "retry_backoff_s": 0.01, "retry_max_wait_s": 5.0}


class ImageHost:
    """A threaded HTTP image server. Paths: ``/img/NAME`` an image; ``/flaky/N/NAME`` 503 for the first N
    requests, then the image; ``/down/NAME`` always 503; ``/missing/NAME`` 404; ``/busy/NAME`` 429 asking to
    come back in an hour; ``/slow/NAME`` the image once ``release`` is set. Counts requests per path and the
    most in flight at once; with ``hold`` set, a request waits (up to 1 s) until that many are in flight, so a
    limit that is not kept shows."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.in_flight = self.most_in_flight = 0
        self.hold = 0
        self.release, self.slow_seen = threading.Event(), threading.Event()
        self._cond = threading.Condition()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with host._cond:
                    host.requests[self.path] += 1
                    seen = host.requests[self.path]
                    host.in_flight += 1
                    host.most_in_flight = max(host.most_in_flight, host.in_flight)
                    host._cond.notify_all()
                    if host.hold and host._cond.wait_for(lambda: host.in_flight >= host.hold, timeout=1.0):
                        host._cond.wait(0.02)  # more than the limit, had they been let in, would be in now
                self._answer(seen)

            def _answer(self, seen: int) -> None:
                kind, *rest = self.path.strip("/").split("/")
                if (kind == "flaky" and seen <= int(rest[0])) or kind == "down":
                    return self._send(503, b"try again")
                if kind == "missing":
                    return self._send(404, b"no such image")
                if kind == "busy":
                    return self._send(429, b"slow down", {"Retry-After": "3600"})
                if kind == "slow":
                    host.slow_seen.set()
                    host.release.wait(30)
                self._send(200, image(self.path.rsplit("/", 1)[-1]), {"Content-Type": "image/png"})

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                with host._cond:  # before the client can have the answer and send its next request
                    host.in_flight -= 1
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that went away
                    self.send_response(status)
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"


def image(name: str) -> bytes:
    return encode(noise_image(48, 40, seed=zlib.crc32(name.encode())), "PNG")


@pytest.fixture
def host() -> Iterator[ImageHost]:
    server = ImageHost()
    threading.Thread(target=server.server.serve_forever, daemon=True).start()
    yield server
    server.release.set()
    server.server.shutdown()
    server.server.server_close()


async def batches_of(batches: Sequence[Sequence[Product]]) -> AsyncIterator[Sequence[Product]]:
    for batch in batches:
        await asyncio.sleep(0)
        yield batch


def product(pid: str, *images: str, name: str | None = None) -> Product:
    return Product(id=pid, name=name or f"product {pid}", category="mug", images=list(images))


async def stream_all(stack, batches: Sequence[Sequence[Product]], **kwargs) -> list[list[Outcome]]:
    async with contextlib.aclosing(stack.ingest.upsert_stream(batches_of(batches), **kwargs)) as stream:
        return [outcomes async for outcomes in stream]


async def test_stream_gives_the_same_outcomes_and_vectors_as_upsert(
    model_repository, backend, tmp_path, mongo_uri, host
):
    (tmp_path / "local.png").write_bytes(image("local"))
    changed = product("twice", host.url("img/twice-b.png"), name="the same id, new photo")
    batches = [
        [product("a", host.url("img/a.png")), product("b", host.url("img/b1.png"), host.url("img/b2.png"))],
        [product("c", str(tmp_path / "local.png")), product("gone", host.url("missing/x.png"))],
        [product("twice", host.url("img/twice-a.png")), product("d", host.url("img/d.png"))],
        [changed, product("a", host.url("img/a.png"))],  # a: same content as batch 1, so unchanged
        [changed, product("e", host.url("img/e.png"))],  # a changed product seen again: unchanged now
    ]
    ingest = {"batch_size": 2, "prefetch_batches": 2, **FAST_RETRIES}
    one_settings, two_settings = (
        make_settings(model_repository, backend, tmp_path / name, mongo_uri, ingest=ingest) for name in ("1", "2")
    )
    async with open_stack(one_settings) as one, open_stack(two_settings) as two:
        by_upsert = [await one.ingest.upsert(batch, source="shop") for batch in batches]
        by_stream = await stream_all(two, batches, source="shop")
        assert by_stream == by_upsert
        statuses = [[o.status for o in batch] for batch in by_stream]
        assert statuses == [
            ["added", "added"],
            ["added", "rejected"],
            ["added", "added"],
            ["updated", "unchanged"],
            ["unchanged", "added"],
        ]
        assert "404" in (by_stream[1][1].error or "")
        for pid in ("a", "b", "c", "twice", "d", "e"):
            want, got = await one.index.product_vectors(pid), await two.index.product_vectors(pid)
            assert want.keys() == got.keys() and want
            for modality in want:
                assert len(want[modality]) == len(got[modality])
                np.testing.assert_allclose(np.stack(got[modality]), np.stack(want[modality]), atol=1e-5)
        assert await one.index.product_ids() == await two.index.product_ids()
        ids = sorted({p.id for batch in batches for p in batch})
        assert await one.mongo.get_states(ids) == await two.mongo.get_states(ids)  # hashes, model, source
        # Run again, same outcomes on both paths: "twice" changes back and forth, the rest is unchanged.
        again = await stream_all(two, batches)
        assert again == [await one.ingest.upsert(batch) for batch in batches]
        assert Counter(o.status for batch in again for o in batch) == Counter(unchanged=7, updated=2, rejected=1)
        assert host.requests["/missing/x.png"] == 4  # once per run and path: a 404 is never retried


@pytest.mark.parametrize("path", ["stream", "upsert"])
async def test_a_host_that_fails_twice_is_retried_and_the_image_goes_in(stack, host, monkeypatch, path):
    for key, value in FAST_RETRIES.items():
        monkeypatch.setattr(stack.ingest.settings, key, value)
    batch = [
        product("flaky", host.url("flaky/2/f.png")),
        product("down", host.url("down/d.png")),
        product("busy", host.url("busy/b.png")),
        product("fine", host.url("img/ok.png")),
    ]
    if path == "stream":
        [outcomes] = await stream_all(stack, [batch])
    else:
        outcomes = await stack.ingest.upsert(batch)
    status = {o.id: o.status for o in outcomes}
    errors = {o.id: o.error or "" for o in outcomes}
    assert status == {"flaky": "added", "down": "rejected", "busy": "rejected", "fine": "added"}
    assert host.requests["/flaky/2/f.png"] == 3  # two 503s, then the image
    assert host.requests["/down/d.png"] == 4 and "503" in errors["down"] and "4 tries" in errors["down"]
    # A Retry-After longer than the ingest waits: given up at once, the reason says so.
    assert host.requests["/busy/b.png"] == 1 and "retry after 3600 s" in errors["busy"]
    assert await stack.index.product_ids() == {"flaky", "fine"}


async def test_a_missing_image_is_rejected_without_retries(stack, host, monkeypatch):
    for key, value in FAST_RETRIES.items():
        monkeypatch.setattr(stack.ingest.settings, key, value)
    [outcomes] = await stream_all(stack, [[product("m", host.url("missing/m.png"))]])
    assert [o.status for o in outcomes] == ["rejected"]
    assert "404" in (outcomes[0].error or "") and "missing/m.png" in (outcomes[0].error or "")
    assert host.requests["/missing/m.png"] == 1
    assert (await stack.mongo.get_states(["m"])) == {}


async def test_downloads_per_host_stay_within_the_limit(stack, host, monkeypatch):
    limit = 3
    monkeypatch.setattr(stack.ingest.settings, "per_host_concurrency", limit)
    monkeypatch.setattr(stack.ingest.settings, "prefetch_batches", 2)
    host.hold = limit  # each request waits for company: a missing limit would let more than 3 in
    batches = [[product(f"p{b}-{i}", host.url(f"img/{b}-{i}.png")) for i in range(4)] for b in range(4)]
    batches[0].append(product("two-images", host.url("img/x1.png"), host.url("img/x2.png")))
    outcomes = await stream_all(stack, batches)
    assert all(o.status == "added" for batch in outcomes for o in batch)
    assert sum(host.requests.values()) == 18
    assert host.most_in_flight == limit  # reached (the server holds requests until 3 are in), never passed
    # upsert() keeps the limit too.
    host.most_in_flight = 0
    await stack.ingest.upsert([product(f"u{i}", host.url(f"img/u{i}.png")) for i in range(7)])
    assert host.most_in_flight == limit


class Stop(Exception):
    """What a job's cancel check raises between two batches."""


async def test_stopping_midway_leaves_nothing_running_and_nothing_half_written(stack, host, monkeypatch):
    monkeypatch.setattr(stack.ingest.settings, "prefetch_batches", 2)
    await stack.ingest.upsert([product("warm", host.url("img/warm.png"))])  # the encoder's workers are up
    before = {t for t in asyncio.all_tasks() if not t.done()}
    batches = [[product(f"b{b}-{i}", host.url(f"img/{b}-{i}.png")) for i in range(3)] for b in range(5)]
    batches[3][1] = product("b3-1", host.url("slow/3-1.png"))  # its download hangs until released
    ahead: set[asyncio.Task] = set()
    written: list[list[Outcome]] = []
    with pytest.raises(Stop):
        async with contextlib.aclosing(stack.ingest.upsert_stream(batches_of(batches))) as stream:
            async for outcomes in stream:
                written.append(outcomes)
                ahead |= {t for t in asyncio.all_tasks() if t.get_name() == "ingest ahead"}
                if len(written) == 2:
                    assert await asyncio.to_thread(host.slow_seen.wait, 30)  # batch 3 is being fetched ahead
                    raise Stop
    assert [[o.status for o in batch] for batch in written] == [["added"] * 3] * 2
    # A model call already running in the encoder's thread cannot be interrupted: it belongs to the encoder (its
    # caller, the stream, is gone) and must end on its own, soon.
    calls = {t for t in asyncio.all_tasks() if t.get_name() == "micro-batch call"}
    if calls:
        _, running = await asyncio.wait(calls, timeout=30)
        assert not running
    # Left out: the encoder's micro-batcher waiting on its queue (a child task of its worker, up before).
    left = {t for t in asyncio.all_tasks() if not t.done() and t.get_coro().__qualname__ != "Queue.get"}
    assert left - before == set()
    assert ahead and all(t.done() for t in ahead)
    assert any(t.cancelled() for t in ahead)  # batch 3's, stuck in its download, was cancelled
    done_ids = {o.id for batch in written for o in batch}
    later_ids = {p.id for batch in batches[2:] for p in batch}
    assert done_ids <= await stack.index.product_ids()
    assert not later_ids & await stack.index.product_ids()
    assert await stack.mongo.get_states(sorted(later_ids)) == {}
    states = await stack.mongo.get_states(sorted(done_ids))
    assert all(s.indexed_hash == s.content_hash is not None for s in states.values()) and len(states) == 6


async def test_a_source_that_fails_midway_still_gets_the_batches_read_before_it_written(stack, host):
    async def failing() -> AsyncIterator[list[Product]]:
        for b in range(2):
            yield [product(f"s{b}-{i}", host.url(f"img/s{b}-{i}.png")) for i in range(2)]
        raise ConnectionError("the catalog database went away")

    written: list[list[Outcome]] = []
    with pytest.raises(ConnectionError, match="went away"):
        async with contextlib.aclosing(stack.ingest.upsert_stream(failing())) as stream:
            async for outcomes in stream:
                written.append(outcomes)
    assert [[o.status for o in batch] for batch in written] == [["added", "added"]] * 2
    assert await stack.index.product_ids() == {"s0-0", "s0-1", "s1-0", "s1-1"}
