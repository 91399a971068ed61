"""A real tritonserver (the binary bundled in nvidia-pytriton, python backend, cpu_test configs) serving the
tiny exported model: parity with in-process, batching, failures, and the deployment file."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import Settings
from pipeline.encoders.onnx import OnnxEncoder
from pipeline.errors import EncoderUnavailable, InvalidInput, ModelMismatch
from pipeline.manifest import load_manifest
from pipeline.triton.server import LocalTriton, unsupported_reason
from pipeline.types import Precision
from tests.catalogs import draw
from tests.images import encode, noise_image

REASON = unsupported_reason()
needs_triton = pytest.mark.skipif(REASON is not None, reason=f"tritonserver cannot run here: {REASON}")
TEXTS = ["red mug", "a blue striped cotton t-shirt for summer", "x", "word " * 100]
IMAGES = [
    encode(noise_image(640, 480, seed=1), "JPEG"),
    encode(draw("green", "poster", 3), "PNG"),
    encode(noise_image(300, 500, "RGBA", seed=2), "PNG"),
]


@pytest.fixture(scope="module")
def triton(model_repository, tmp_path_factory):
    if REASON is not None:
        pytest.skip(f"tritonserver cannot run here: {REASON}")
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    server = LocalTriton(model_repository, log_file=log).start()
    yield server
    server.stop()


def _settings(model_repository, url, **triton):
    return Settings(encoder={"model_repository": model_repository}, triton={"url": url, **triton})


async def _triton_encoder(model_repository, url, precision=Precision.FP32, **triton):
    from pipeline.encoders.triton import TritonEncoder

    return await TritonEncoder.connect(_settings(model_repository, url, **triton), precision)


@pytest.fixture(scope="module")
async def reference(model_repository):
    encoder = OnnxEncoder.load(model_repository, precision=Precision.FP32)
    texts, images = await encoder.encode_texts(TEXTS), await encoder.encode_images(IMAGES)
    await encoder.aclose()
    return texts, images


@needs_triton
@pytest.mark.parametrize("send", ["tensors", "bytes"])
async def test_triton_matches_in_process(triton, model_repository, reference, send):
    encoder = await _triton_encoder(model_repository, triton.grpc_url, send=send)
    try:
        assert encoder.info.backend == "triton" and encoder.info.fingerprint
        texts, images = await encoder.encode_texts(TEXTS), await encoder.encode_images(IMAGES)
    finally:
        await encoder.aclose()
    np.testing.assert_allclose(texts, reference[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(images, reference[1], atol=1e-5, rtol=0)


@needs_triton
async def test_bytes_mode_sends_the_file_not_the_tensor(triton, model_repository):
    sizes = {}
    for send in ("tensors", "bytes"):
        encoder = await _triton_encoder(model_repository, triton.grpc_url, send=send)
        await encoder.encode_images([IMAGES[0]])
        sizes[send] = encoder.bytes_sent
        await encoder.aclose()
    assert sizes["tensors"] == 3 * 224 * 224 * 4 and sizes["bytes"] == len(IMAGES[0])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def _metric(text: str, name: str, model: str) -> float:
    pattern = rf'^{name}{{model="{model}",version="1"}} (\d+)'
    return float(sum(float(m) for m in re.findall(pattern, text, flags=re.M)))


def _delta(before: str, after: str, name: str, model: str) -> float:
    return _metric(after, name, model) - _metric(before, name, model)


@needs_triton
async def test_64_concurrent_requests_are_batched_and_correct(triton, model_repository):
    before = await asyncio.to_thread(_get, triton.metrics_url)
    encoder = await _triton_encoder(model_repository, triton.grpc_url, send="tensors")
    local = OnnxEncoder.load(model_repository, precision=Precision.FP32)
    try:
        images = [encode(noise_image(256, 256, seed=i), "JPEG") for i in range(64)]
        results = await asyncio.gather(*(encoder.encode_images([img]) for img in images))
        expected = await local.encode_images(images)
    finally:
        await encoder.aclose()
        await local.aclose()
    np.testing.assert_allclose(np.concatenate(results), expected, atol=1e-5)
    after = await asyncio.to_thread(_get, triton.metrics_url)
    count = _metric(after, "nv_inference_count", "clip_visual") - _metric(before, "nv_inference_count", "clip_visual")
    execs = _metric(after, "nv_inference_exec_count", "clip_visual") - _metric(
        before, "nv_inference_exec_count", "clip_visual"
    )
    assert count == 64 and execs < count, (count, execs)


@needs_triton
async def test_bad_requests_fail_alone_and_server_stays_up(triton, model_repository, tmp_path):
    encoder = await _triton_encoder(model_repository, triton.grpc_url, send="bytes")
    try:
        results = await asyncio.gather(
            encoder.encode_images([b"\x89PNG\r\n\x1a\n corrupt"]),
            encoder.encode_images([IMAGES[0]]),
            return_exceptions=True,
        )
        assert isinstance(results[0], InvalidInput) and "image 0: not a readable image" in str(results[0])
        assert results[1].shape == (1, 32)
        with pytest.raises(InvalidInput, match="empty text"):
            await encoder.encode_texts(["   "])
        assert (await encoder.encode_texts(["still up"])).shape == (1, 32)
    finally:
        await encoder.aclose()
    assert await asyncio.to_thread(_get, f"{triton.http_url}/v2/health/ready") == ""  # 200, empty body


@needs_triton
async def test_wrong_model_or_dims_refused_at_start_up(triton, model_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    manifest = json.loads((repo / "manifest.json").read_text())
    manifest["models"]["image"]["outputs"][0]["shape"] = [-1, 64]
    (repo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelMismatch, match=r"'clip_visual'.*differs from the manifest"):
        await _triton_encoder(repo, triton.grpc_url)
    manifest["models"]["image"]["outputs"][0]["shape"] = [-1, 32]
    manifest["models"]["image"]["variants"]["fp32"]["triton_model"] = "clip_vision_wrong"
    (repo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelMismatch, match=r"does not serve 'clip_vision_wrong'.*explicit"):
        await _triton_encoder(repo, triton.grpc_url)


async def test_unreachable_server_is_encoder_unavailable(model_repository):
    from pipeline.stores.mongod import free_port

    with pytest.raises(EncoderUnavailable, match=r"Triton at 127\.0\.0\.1"):
        await _triton_encoder(model_repository, f"127.0.0.1:{free_port()}", timeout_s=2, retries=1, backoff_s=0.05)


async def test_fallback_when_unreachable_at_start(model_repository, reference, caplog):
    from pipeline.stores.mongod import free_port

    encoder = await _triton_encoder(model_repository, f"127.0.0.1:{free_port()}", timeout_s=2, retries=0, fallback=True)
    try:
        assert encoder.using_fallback
        for _ in range(3):
            np.testing.assert_allclose(await encoder.encode_texts(TEXTS), reference[0], atol=1e-6)
    finally:
        await encoder.aclose()
    assert sum("answering in-process" in r.message for r in caplog.records) == 1  # logged once, not per request


@needs_triton
@pytest.mark.parametrize("fallback", [False, True])
async def test_server_killed_mid_run(model_repository, tmp_path, reference, fallback):
    server = LocalTriton(model_repository, log_file=tmp_path / "t.log").start()
    encoder = await _triton_encoder(
        model_repository, server.grpc_url, timeout_s=3, retries=2, backoff_s=0.05, fallback=fallback
    )
    try:
        assert (await encoder.encode_texts(["before"])).shape == (1, 32)
        server.kill()
        results = await asyncio.wait_for(
            asyncio.gather(*(encoder.encode_texts([t]) for t in TEXTS), return_exceptions=True), timeout=30
        )
    finally:
        await encoder.aclose()
        server.stop()
    if fallback:
        np.testing.assert_allclose(np.concatenate(results), reference[0], atol=1e-6)
    else:
        assert all(isinstance(r, EncoderUnavailable) for r in results), results


WORDS = ["red", "mug", "striped", "cotton", "blue", "poster", "vase", "green", "dotted", "summer", "linen"]


@needs_triton
@pytest.mark.parametrize("send", ["tensors", "bytes"])
async def test_int8_vectors_do_not_depend_on_batch_mates(triton, model_repository, send):
    """Dynamic INT8 scales activations per model call: an item embedded alone, inside a batch of 32 (texts of
    many lengths, so padding too), and among 32 concurrent callers must give the same vector, and the same as
    in-process INT8. The INT8 models (their own, not versions of the batched ones) run every item alone: as many
    executions as items, where the server would otherwise merge concurrent requests."""
    texts = [" ".join(WORDS[: 1 + i % len(WORDS)]) + f" {i}" for i in range(32)]
    images = [encode(noise_image(64 + 8 * i, 64, seed=i), "PNG") for i in range(32)]
    before = await asyncio.to_thread(_get, triton.metrics_url)
    encoder = await _triton_encoder(model_repository, triton.grpc_url, Precision.INT8, send=send)
    local = OnnxEncoder.load(model_repository, precision=Precision.INT8)
    try:
        alone_texts = np.concatenate([await encoder.encode_texts([t]) for t in texts])
        alone_images = np.concatenate([await encoder.encode_images([i]) for i in images])
        batch_texts, batch_images = await encoder.encode_texts(texts), await encoder.encode_images(images)
        # and while other callers' requests reach the server at the same time: 32 callers of one item each
        callers_texts = await asyncio.gather(*(encoder.encode_texts([t]) for t in texts))
        callers_images = await asyncio.gather(*(encoder.encode_images([i]) for i in images))
        crowd = await asyncio.gather(encoder.encode_texts(texts[::-1]), encoder.encode_texts(texts))
        local_texts = np.concatenate([await local.encode_texts([t]) for t in texts])
    finally:
        await encoder.aclose()
        await local.aclose()
    after = await asyncio.to_thread(_get, triton.metrics_url)
    np.testing.assert_allclose(batch_texts, alone_texts, atol=1e-6, rtol=0)
    np.testing.assert_allclose(batch_images, alone_images, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.concatenate(callers_texts), alone_texts, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.concatenate(callers_images), alone_images, atol=1e-6, rtol=0)
    np.testing.assert_allclose(crowd[0][::-1], alone_texts, atol=1e-6, rtol=0)
    np.testing.assert_allclose(crowd[1], alone_texts, atol=1e-6, rtol=0)
    np.testing.assert_allclose(alone_texts, local_texts, atol=1e-5, rtol=0)
    for model, items in (("clip_text_int8", 5 * 32), ("clip_visual_int8", 3 * 32)):
        count, execs = (_delta(before, after, m, model) for m in ("nv_inference_count", "nv_inference_exec_count"))
        assert count == items and execs == count, (model, count, execs)
    for model in ("clip_text", "clip_visual"):  # the batched models were not used for INT8
        assert _delta(before, after, "nv_inference_count", model) == 0, model


@needs_triton
async def test_int8_models_refuse_a_multi_item_request(triton, model_repository):
    """The server itself holds INT8 to one item per call (max_batch_size 1), whatever a client sends."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=triton.grpc_url)
    try:
        config = (await client.get_model_config("clip_text_int8", "1", as_json=True))["config"]
        assert int(config["max_batch_size"]) == 1 and "dynamic_batching" not in config
        assert "dynamic_batching" in (await client.get_model_config("clip_text", "1", as_json=True))["config"]
        spec = load_manifest(model_repository).text
        ids = np.array([[spec.bos_token_id, t, spec.eos_token_id] for t in (5, 6)], dtype=np.int64)
        tensors = []
        for name in ("input_ids", "attention_mask"):
            tensor = grpcclient.InferInput(name, list(ids.shape), "INT64")
            tensor.set_data_from_numpy(ids if name == "input_ids" else np.ones_like(ids))
            tensors.append(tensor)
        with pytest.raises(InferenceServerException, match="batch"):
            await client.infer("clip_text_int8", tensors, model_version="1")
        result = await client.infer("clip_text", tensors, model_version="1")
        assert result.as_numpy("text_embeds").shape == (2, 32)
    finally:
        await client.close()


@needs_triton
async def test_bad_item_named_by_its_place_in_the_callers_list(triton, model_repository):
    # INT8 sends one item per request: the server's "image 0" must come back as the caller's index.
    encoder = await _triton_encoder(model_repository, triton.grpc_url, Precision.INT8, send="bytes")
    try:
        with pytest.raises(InvalidInput, match="image 2: not a readable image"):
            await encoder.encode_images([IMAGES[0], IMAGES[1], b"\x89PNG\r\n\x1a\n corrupt", IMAGES[2]])
        assert not encoder.using_fallback
    finally:
        await encoder.aclose()


@needs_triton
async def test_server_side_preprocessing_honours_pipeline_limits(model_repository, tmp_path):
    """The python-backend preprocessing reads PIPELINE__LIMITS__* from the server's environment: a client with
    the default limits (which would pass all of these) is refused by the server, naming the input."""
    env = {
        "PIPELINE__LIMITS__IMAGE_FORMATS": '["PNG"]',
        "PIPELINE__LIMITS__MAX_IMAGE_PIXELS": "100000",
        "PIPELINE__LIMITS__MAX_ASPECT_RATIO": "2",
        "PIPELINE__LIMITS__MAX_TEXT_CHARS": "20",
    }
    with LocalTriton(model_repository, log_file=tmp_path / "t.log", env=env) as server:
        encoder = await _triton_encoder(model_repository, server.grpc_url, send="bytes")
        try:
            with pytest.raises(InvalidInput, match=r"image 0: not an image in an accepted format \(PNG\)"):
                await encoder.encode_images([encode(noise_image(64, 64, seed=1), "JPEG")])
            with pytest.raises(InvalidInput, match="image 0: 640x480 pixels is over the limit of 100000"):
                await encoder.encode_images([encode(noise_image(640, 480, seed=1), "PNG")])
            with pytest.raises(InvalidInput, match="image 0: aspect ratio 300x100 is over 2"):
                await encoder.encode_images([encode(noise_image(300, 100, seed=1), "PNG")])
            with pytest.raises(InvalidInput, match="text 0: 30 characters is over the limit of 20"):
                await encoder.encode_texts(["x" * 30])
            assert (await encoder.encode_images([encode(noise_image(200, 200, seed=1), "PNG")])).shape == (1, 32)
            assert (await encoder.encode_texts(["short text"])).shape == (1, 32)
            assert not encoder.using_fallback
        finally:
            await encoder.aclose()


@needs_triton
@pytest.mark.parametrize("send", ["tensors", "bytes"])
async def test_server_with_another_model_refused_at_start_up(triton, model_repository, tmp_path, send):
    # Same tensors, other weights: only the fingerprint tells them apart.
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    manifest = json.loads((repo / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 64
    (repo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelMismatch, match=r"serves another model.*fingerprint"):
        await _triton_encoder(repo, triton.grpc_url, send=send)


async def _until_triton_answers(encoder, texts, timeout_s=90.0):
    """Encode until an answer comes from Triton, not the fallback (the gRPC channel reconnects after its own
    backoff once the server is up; until then requests are answered in-process)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        sent = encoder.bytes_sent
        result = await encoder.encode_texts(texts)
        if encoder.bytes_sent > sent:
            return result
        assert asyncio.get_running_loop().time() < deadline, "Triton never answered"
        await asyncio.sleep(0.5)


@needs_triton
async def test_model_checked_before_triton_is_used_after_a_start_up_fallback(
    model_repository, other_repository, reference, tmp_path
):
    from pipeline.stores.mongod import free_port

    port = free_port()
    encoder = await _triton_encoder(
        model_repository, f"127.0.0.1:{port}", timeout_s=3, retries=0, fallback=True, fallback_cooldown_s=0
    )
    try:
        assert encoder.using_fallback is False and encoder.bytes_sent == 0  # cooldown 0: Triton is tried next
        # The server that comes up on that address serves another model (same tensors, another fingerprint).
        with LocalTriton(other_repository, log_file=tmp_path / "other.log", grpc_port=port):
            with pytest.raises(ModelMismatch, match="serves another model"):
                await _until_triton_answers(encoder, TEXTS)
            assert encoder.bytes_sent == 0  # nothing was sent to the wrong model
        # The right one: checked, then used.
        with LocalTriton(model_repository, log_file=tmp_path / "right.log", grpc_port=port):
            np.testing.assert_allclose(await _until_triton_answers(encoder, TEXTS), reference[0], atol=1e-5)
    finally:
        await encoder.aclose()


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")  # Debian's compose v1 reads the same file format
    return [legacy] if legacy else None


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                 "offset", "inf", "nan"}  # fmt: skip


def _promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once strings, label matchers, ranges,
    Grafana variables, grouping clauses and function calls are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\{?\w+\}?", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = re.findall(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()", expr)
    return {n for n in names if n.lower() not in _PROMQL_WORDS}


def test_compose_file_is_valid(tmp_path):
    deploy = Path(__file__).parent.parent / "deploy"
    yaml = pytest.importorskip("yaml")
    # The dashboard reads only metrics the service exposes (so a rename cannot leave it silently empty).
    histograms = ("http_request_duration_seconds", "http_request_duration_highr_seconds", "search_stage_seconds",
                  "search_top1_similarity", "generation_top1_similarity")  # fmt: skip
    summaries = ("http_request_size_bytes", "http_response_size_bytes")
    counters = ("http_requests", "search_no_hit", "search_queries", "embedding_cache_hits", "embedding_cache_misses",
                "event_log_written", "event_log_dropped", "generation_queries", "generation_clicks")  # fmt: skip
    exposed = {f"{h}{s}" for h in histograms for s in ("_bucket", "_sum", "_count")}
    exposed |= {f"{m}{s}" for m in summaries for s in ("_sum", "_count")} | {f"{c}_total" for c in counters}
    exposed |= {"embedding_cache_entries", "event_log_queue_depth", "catalog_products", "model_info"}
    from pipeline.api.metrics import Metrics  # the service's own families must be in the list above

    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",), "info": ("_info",)}
    own = {f"{m.name}{s}" for m in Metrics().registry.collect() for s in suffixes[m.type]}
    assert own <= exposed, own - exposed
    dashboard = json.loads((deploy / "grafana" / "dashboards" / "product-search.json").read_text())
    assert dashboard["uid"] == "product-search"
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            exprs.extend(v for k, v in node.items() if k == "expr" and isinstance(v, str))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dashboard)
    used = set().union(*map(_promql_metric_names, exprs))
    assert len(exprs) >= 10 and {"http_requests_total", "search_stage_seconds_bucket"} <= used, (exprs, used)
    assert used <= exposed, f"the dashboard reads metrics the service does not expose: {sorted(used - exposed)}"
    datasources = yaml.safe_load((deploy / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            assert t["datasource"]["uid"] in uids, panel["title"]
    scrape = yaml.safe_load((deploy / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {"api:8000", "triton:8002"} <= targets, targets

    cli = _compose_cli()
    if cli is None:
        pytest.skip("no compose client (docker compose plugin or docker-compose); scripts/system-deps.sh installs it")
    env = {}
    for line in (deploy / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    env |= {"UI_API_KEY": "ui-key-for-the-test", "GRAFANA_ADMIN_PASSWORD": "grafana-password-for-the-test"}
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    clean_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}

    def config() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, "-f", str(deploy / "docker-compose.yml"), "--env-file", str(env_file), "config"],
            capture_output=True,
            text=True,
            env=clean_env,
        )

    proc = config()
    assert proc.returncode == 0, proc.stderr
    for expected in ("service_healthy", "nvcr.io/nvidia/tritonserver", "PIPELINE__TRITON__URL", "capabilities"):
        assert expected in proc.stdout or expected in (deploy / "Dockerfile.triton").read_text(), expected
    services = yaml.safe_load(proc.stdout)["services"]
    assert {"triton", "qdrant", "mongo", "api", "ui", "prometheus", "grafana"} <= set(services), sorted(services)
    assert services["ui"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for store in ("triton", "qdrant", "mongo"):
        assert services["api"]["depends_on"][store]["condition"] == "service_healthy", store
    api_env, ui_env = services["api"]["environment"], services["ui"]["environment"]
    assert api_env["PIPELINE__ENVIRONMENT"] == "production" and "PIPELINE__TRITON__URL" in api_env
    assert ui_env["PIPELINE__API__URL"] == "http://api:8000" and ui_env["PIPELINE__API__KEY"] == env["UI_API_KEY"]
    assert not any(k.startswith(("PIPELINE__QDRANT", "PIPELINE__MONGO", "PIPELINE__TRITON")) for k in ui_env), ui_env
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == env["GRAFANA_ADMIN_PASSWORD"]
    # The api connects as the least-privilege application user, credentials apart from the URI; never as root.
    assert api_env["PIPELINE__MONGO__USERNAME"] == env["MONGO_APP_USER"] != env["MONGO_ROOT_USER"]
    assert api_env["PIPELINE__MONGO__PASSWORD"] == env["MONGO_APP_PASSWORD"]
    assert env["MONGO_ROOT_PASSWORD"] not in json.dumps(api_env) and "@" not in api_env["PIPELINE__MONGO__URI"]
    mongo_env = services["mongo"]["environment"]
    assert mongo_env["MONGO_APP_PASSWORD"] == env["MONGO_APP_PASSWORD"]
    assert mongo_env["MONGO_APP_DATABASE"] == api_env["PIPELINE__MONGO__DATABASE"]
    # compose v2 gives mounts as objects, v1 as "source:target:mode"
    mounts = [v if isinstance(v, dict) else dict(source=v.split(":")[0], target=v.split(":")[1])
              for v in services["mongo"]["volumes"]]  # fmt: skip
    init = [m["source"] for m in mounts if m["target"] == "/docker-entrypoint-initdb.d"]
    assert init and (Path(init[0]) / "app-user.js").is_file()
    # Triton's preprocessing and the api read the same input limits.
    raw = yaml.safe_load((deploy / "docker-compose.yml").read_text())["services"]
    assert raw["triton"]["env_file"] == raw["api"]["env_file"] == ["limits.env"]
    env_file.write_text("QDRANT_API_KEY=k\n")  # a required secret missing: refused, naming it
    missing = config()
    assert missing.returncode != 0 and "MONGO_ROOT_PASSWORD" in missing.stderr
    env.pop("UI_API_KEY")  # the page's key missing: refused, saying how to create one
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    missing = config()
    assert missing.returncode != 0 and "UI_API_KEY" in missing.stderr and "keys create" in missing.stderr
