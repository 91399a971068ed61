"""Jobs on Celery workers: a real ``redis-server`` (Debian's), the test mongod, ``python -m pipeline worker``
subprocesses and the service (uvicorn) with ``PIPELINE__JOBS__RUNNER=celery``, all talking over the network
as in production. There is no Qdrant server here, so the worker keeps its own Qdrant Edge folder (allowed in
development, with a warning): the tests follow the job records, the products in MongoDB and what the
worker's own collection holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.jobs.celery_app import check_celery, shown
from pipeline.stores.mongod import free_port
from tests.catalogs import products
from tests.service import RunningService, error_message, service_env, start_service

FINAL = {"succeeded", "failed", "cancelled"}
REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS is None, reason="no redis-server (scripts/system-deps.sh installs it)")


# --- the servers --------------------------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free loopback port with its files in a temporary folder, no persistence."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        args = [str(REDIS), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--save", "", "--appendonly", "no"]  # fmt: skip
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((self.folder / "redis.log").read_text()) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class Worker:
    """``python -m pipeline worker`` as an operator runs it; ready once Celery says so."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        full = {k: v for k, v in os.environ.items() if k not in ("PIPELINE__API__URL", "PIPELINE__API__KEY")}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "worker"], env={**full, **env},
                                         stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 90
        while f"jobs-{self.proc.pid}@" not in self.logs() or " ready." not in self.logs():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"the worker did not start ({self.proc.wait()}):\n{self.logs()[-3000:]}")
            time.sleep(0.1)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)  # reaped: a killed worker's pid is dead, not a zombie


class ImageGate:
    """The catalog's images over HTTP on loopback; while held, every request waits (a job stays mid-batch)."""

    def __init__(self, folder: Path) -> None:
        gate, self.requests, self._open = self, 0, threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gate.requests += 1
                gate._open.wait(60)
                path = folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                with contextlib.suppress(OSError):  # the worker that asked may have been stopped meanwhile
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()


@dataclass
class Deployment:
    """One Redis, one service (celery runner), workers started and stopped by the tests; one database."""

    root: Path
    redis: RedisServer
    service: RunningService
    worker_env: dict[str, str]
    database: str
    mongo_uri: str
    workers: list[Worker] = field(default_factory=list)

    @property
    def worker(self) -> Worker | None:
        live = [w for w in self.workers if w.proc.poll() is None]
        return live[-1] if live else None

    def start_worker(self, **env: str) -> Worker:
        worker = Worker({**self.worker_env, **env}, self.root / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def ensure_worker(self) -> Worker:
        return self.worker or self.start_worker()

    def stop_worker(self) -> None:
        if self.worker is not None:
            assert self.worker.stop() == 0, self.worker.logs()[-3000:]

    def products(self, prefix: str) -> int:
        with MongoClient(self.mongo_uri) as client:
            return client[self.database]["products"].count_documents({"_id": {"$regex": f"^{prefix}-"}})


@pytest.fixture(scope="module")
def deployment(model_repository, mongo_uri, tmp_path_factory) -> Iterator[Deployment]:
    if REDIS is None:
        pytest.skip("no redis-server (scripts/system-deps.sh installs it)")
    root = tmp_path_factory.mktemp("celery")
    redis = RedisServer(root)
    redis.start()
    database = f"t_{uuid.uuid4().hex[:10]}"
    common = {"PIPELINE__ENCODER__PRECISION": "fp32", "PIPELINE__JOBS__RUNNER": "celery",
              "PIPELINE__JOBS__BROKER_URL": redis.url}  # fmt: skip
    # Each process its own Qdrant Edge folder (one owner per folder); batches of 4 so a job has several.
    worker_env = service_env(model_repository, root / "worker" / "qdrant", mongo_uri, database, **common,
                             PIPELINE__INGEST__BATCH_SIZE="4", PIPELINE__INGEST__HTTP_TIMEOUT_S="60")  # fmt: skip
    service = start_service(service_env(model_repository, root / "api" / "qdrant", mongo_uri, database, **common),
                            root / "service.log")  # fmt: skip
    deployment = Deployment(root, redis, service, worker_env, database, mongo_uri)
    try:
        yield deployment
        deployment.stop_worker()
        # Every product the jobs wrote to MongoDB is in the worker's own collection, and nothing else is.
        status = _status(Settings(**_nested(worker_env)))
        assert status["in_agreement"] and status["qdrant"]["products"] == status["mongo"]["products"] > 0, status
    finally:
        for worker in deployment.workers:
            worker.stop(signal.SIGKILL)
        assert service.stop() in (0, -15)
        redis.stop()
    assert "Traceback" not in service.logs(), service.logs()[-3000:]


@pytest.fixture
def gate(tmp_path) -> Iterator[ImageGate]:
    served = ImageGate(tmp_path)
    yield served
    served.close()


def _nested(env: dict[str, str]) -> dict[str, Any]:
    """PIPELINE__A__B=v as Settings(a={"b": v})."""
    out: dict[str, Any] = {}
    for key, value in env.items():
        section, name = key.removeprefix("PIPELINE__").lower().split("__")
        out.setdefault(section, {})[name] = value
    return out


def _status(settings: Settings) -> dict[str, Any]:
    from pipeline.stack import open_stack

    async def read() -> dict[str, Any]:
        async with open_stack(settings) as stack:
            return await stack.status()

    return asyncio.run(read())


def _catalog(folder: Path, prefix: str, image_url: str | None = None) -> Path:
    """The 24-product test catalog under ids of its own; images as files, or as URLs under ``image_url``."""
    rows = products(folder)
    for row in rows:
        row["id"] = f"{prefix}-{row['id']}"
        if image_url:
            row["images"] = [f"{image_url}/{name}" for name in row["images"]]
    path = folder / f"{prefix}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _submit(service: RunningService, kind: str, **params: Any) -> dict[str, Any]:
    with service.client() as http:  # the service's own token: admin, may name files on this machine
        r = http.post("/v1/jobs", json={"kind": kind, "params": params})
    assert r.status_code == 202 and r.json()["state"] == "queued", r.text
    return dict(r.json())


def _job(service: RunningService, job_id: str) -> dict[str, Any]:
    with service.client() as http:
        return dict(http.get(f"/v1/jobs/{job_id}").json())


def _until(service: RunningService, job_id: str, done: Any, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while not done(job := _job(service, job_id)):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def _final(service: RunningService, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    return _until(service, job_id, lambda j: j["state"] in FINAL, timeout_s)


# --- the tests ----------------------------------------------------------------------------------------------


@needs_redis
@pytest.mark.slow
def test_a_job_accepted_before_any_worker_runs_once_one_starts(deployment, tmp_path):
    deployment.stop_worker()
    job = _submit(deployment.service, "ingest", path=str(_catalog(tmp_path, "early")))
    time.sleep(1.0)
    assert _job(deployment.service, job["id"])["state"] == "queued"  # the service runs none itself
    worker = deployment.start_worker()
    done = _final(deployment.service, job["id"])
    assert done["state"] == "succeeded", done
    assert (done["result"]["added"], done["result"]["updated"], done["result"]["rejected"]) == (24, 0, 0), done
    assert done["progress"] == {"done": 24, "total": 24} and done["resumed"] == 0
    assert deployment.products("early") == 24
    # Its message came from the service, and once more from the worker's start-up sweep: it ran once.
    assert worker.logs().count(f"job {job['id']} (ingest) started") == 1


@needs_redis
@pytest.mark.slow
def test_cancelling_a_job_running_on_a_worker(deployment, gate, tmp_path):
    deployment.ensure_worker()
    gate.hold()
    job = _submit(deployment.service, "ingest", path=str(_catalog(tmp_path, "cancel", gate.url)))
    _until(deployment.service, job["id"], lambda j: j["state"] == "running" and gate.requests > 0)
    with deployment.service.client() as http:
        cancelling = http.delete(f"/v1/jobs/{job['id']}").json()
    assert cancelling["state"] == "running" and cancelling["cancel_requested"], cancelling
    gate.release()  # the batch in flight completes, then the job stops
    done = _final(deployment.service, job["id"])
    assert done["state"] == "cancelled" and "cancelled after" in done["message"], done
    assert 0 < done["progress"]["done"] < 24
    assert deployment.products("cancel") == done["result"]["added"] > 0  # whole batches only


@needs_redis
@pytest.mark.slow
def test_a_stopped_or_killed_worker_leaves_its_job_to_the_next(deployment, gate, tmp_path):
    first = deployment.ensure_worker()
    gate.hold()
    job = _submit(deployment.service, "ingest", path=str(_catalog(tmp_path, "moved", gate.url)))
    running = _until(deployment.service, job["id"], lambda j: j["state"] == "running" and gate.requests > 0)

    # SIGTERM: the worker stops at once (the job was mid-batch), handing the job back to the queue.
    started = time.monotonic()
    assert first.stop() == 0 and time.monotonic() - started < 15, first.logs()[-3000:]
    handed = _job(deployment.service, job["id"])
    assert handed["state"] == "queued" and handed["resumed"] == 1 and "resumes" in handed["message"], handed

    # The next worker takes it; SIGKILL that one mid-batch too: the record is left running, owner dead.
    seen = gate.requests
    second = deployment.start_worker()
    _until(deployment.service, job["id"], lambda j: j["state"] == "running" and gate.requests > seen)
    assert second.stop(signal.SIGKILL) == -signal.SIGKILL

    # The next worker recovers it at its start (queued again, resumed from its checkpoint) and finishes it.
    gate.release()
    third = deployment.start_worker()
    done = _final(deployment.service, job["id"])
    assert done["state"] == "succeeded" and done["resumed"] == 2, done
    assert (done["result"]["added"], done["result"]["rejected"]) == (24, 0), done  # exact, nothing twice
    assert deployment.products("moved") == 24 and running["started"]
    assert f"job {job['id']} (ingest) was interrupted; now queued" in third.logs()


@needs_redis
@pytest.mark.slow
def test_a_job_whose_message_redis_lost_runs_without_a_worker_restart(deployment, gate, tmp_path):
    """Redis loses a waiting job's message (restarted without its data) while a worker stays up: the worker's
    periodic sweep sees the job queued with Redis's queue empty and publishes it again."""
    import redis

    from pipeline.jobs.celery_app import QUEUE

    deployment.stop_worker()
    worker = deployment.start_worker(PIPELINE__JOBS__RECOVER_S="0.5", PIPELINE__JOBS__LOST_MESSAGE_S="2")
    try:
        gate.hold()
        busy = _submit(deployment.service, "ingest", path=str(_catalog(tmp_path, "busy", gate.url)))
        _until(deployment.service, busy["id"], lambda j: j["state"] == "running" and gate.requests > 0)
        waiting = _submit(deployment.service, "ingest", path=str(_catalog(tmp_path, "lost", None)))
        client = redis.Redis.from_url(deployment.redis.url)
        assert client.llen(QUEUE) == 1  # the waiting job's message, behind the running one
        client.delete(QUEUE)  # gone, as after a restart without persistence
        gate.release()
        assert _final(deployment.service, busy["id"])["state"] == "succeeded"
        done = _final(deployment.service, waiting["id"], timeout_s=90)
        assert done["state"] == "succeeded" and done["result"]["added"] == 24, done
        assert worker.logs().count(f"job {waiting['id']} has been queued with no message in Redis") == 1
    finally:
        gate.release()
        deployment.stop_worker()  # the next test starts one with the usual settings


@needs_redis
@pytest.mark.slow
def test_with_redis_down_submissions_are_refused_and_none_is_left_queued(deployment, tmp_path):
    deployment.ensure_worker()
    deployment.redis.stop()
    try:
        started = time.monotonic()
        with deployment.service.client() as http:
            refused = http.post("/v1/jobs", json={"kind": "embed-all", "params": {}})
            queued = http.get("/v1/jobs", params={"state": "queued"}).json()["jobs"]
            latest = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
        assert time.monotonic() - started < 6
        message = error_message(refused, 503)
        assert "job queue (Redis at redis://127.0.0.1" in message and "not queued" in message, message
        assert queued == []
        assert latest["kind"] == "embed-all" and latest["state"] == "failed", latest
        assert latest["message"].startswith("not queued: the job queue (Redis"), latest
        # The CLI, which submits to the running service, says the same in one line.
        cli = subprocess.run([sys.executable, "-m", "pipeline", "jobs", "submit", "embed-all", "--no-wait"],
                             env={**os.environ, **deployment.service.env}, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert cli.returncode == 1 and "job queue (Redis" in cli.stderr and "Traceback" not in cli.stderr, cli
    finally:
        deployment.redis.start()  # the same port, empty: what was accepted before had run already
    # Redis back: the service publishes again and the worker, reconnected, runs what is accepted.
    _catalog(tmp_path, "back")
    job = _submit(deployment.service, "ingest", path=str(tmp_path / "back.jsonl"))
    done = _final(deployment.service, job["id"])
    assert done["state"] == "succeeded" and done["result"]["added"] == 24, done


def test_settings_the_celery_runner_cannot_work_with_are_refused(caplog):
    def settings(**env: Any) -> Settings:
        return Settings(**{"jobs": {"runner": "celery"}, **env})

    with pytest.raises(PipelineError, match="PIPELINE__JOBS__BROKER_URL=redis://"):
        check_celery(settings())
    with pytest.raises(PipelineError, match="redis:// or rediss://"):
        check_celery(settings(jobs={"runner": "celery", "broker_url": "amqp://guest@rabbit//"}))
    broker = {"runner": "celery", "broker_url": "redis://:secret@redis:6379/0"}
    with pytest.raises(PipelineError, match="PIPELINE__QDRANT__URL"):
        check_celery(settings(environment="production", jobs=broker))
    check_celery(settings(environment="production", jobs=broker, qdrant={"url": "http://qdrant:6333"}))
    with caplog.at_level(logging.WARNING, logger="pipeline.jobs"):
        check_celery(settings(jobs=broker))  # development: allowed, with a warning
    assert "no Qdrant server" in caplog.text
    assert shown(broker["broker_url"]) == "redis://:***@redis:6379/0"


def test_a_worker_without_a_broker_says_what_to_set(tmp_path):
    env = {**os.environ, "PIPELINE__JOBS__RUNNER": "celery", "PIPELINE__QDRANT__PATH": str(tmp_path / "qdrant")}
    env.pop("PIPELINE__JOBS__BROKER_URL", None)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "worker"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1 and "PIPELINE__JOBS__BROKER_URL" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_compose_runs_redis_and_workers_beside_the_api():
    yaml = pytest.importorskip("yaml")
    deploy = Path(__file__).parent.parent / "deploy"
    services = yaml.safe_load((deploy / "docker-compose.yml").read_text())["services"]  # anchors merged
    api, worker, redis = services["api"], services["worker"], services["redis"]
    assert redis["image"].startswith("redis:7") and "--appendonly" in redis["command"]
    assert worker["image"] == api["image"] and worker["command"] == "python -m pipeline worker"
    for env in (api["environment"], worker["environment"]):
        assert env["PIPELINE__JOBS__RUNNER"] == "celery" and "@redis:6379/" in env["PIPELINE__JOBS__BROKER_URL"]
        assert env["PIPELINE__QDRANT__URL"] == "http://qdrant:6333"  # the celery runner's vectors are shared
    shared = {k: v for k, v in api["environment"].items() if not k.startswith("PIPELINE__API__")}
    assert worker["environment"] == shared  # the same model, stores and queue
    for store in ("triton", "qdrant", "mongo", "redis"):
        assert worker["depends_on"][store]["condition"] == "service_healthy", store
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(v.endswith(":/catalog:ro") for v in worker["volumes"])  # the paths ingest jobs name
    data = {v for v in worker["volumes"] if v.endswith(":/data")}
    assert data and data <= set(api["volumes"])  # a re-index on a worker reads the api's uploads
    assert "REDIS_PASSWORD=" in (deploy / ".env.example").read_text()
