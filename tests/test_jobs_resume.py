"""A job survives its service: killed with SIGKILL in the middle of an ingest, the restarted service marks it
interrupted and resumes it where it stopped (the real service, uvicorn in a subprocess)."""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest

from tests.service import service_env, start_service

pytestmark = pytest.mark.slow


def _poll(http, job_id: str, until, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never got there: {job}")


def test_sigkill_mid_ingest_then_restart_resumes_with_exact_counts(model_repository, mongo_uri, tmp_path, catalog):
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    many = [{**r, "id": f"{r['id']}-{n}", "images": [str(catalog.parent / p) for p in r["images"]]}
            for n in range(5) for r in rows]  # fmt: skip
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps(r) + "\n" for r in many))
    env = service_env(model_repository, tmp_path / "qdrant", mongo_uri, f"t_{uuid.uuid4().hex[:10]}",
                      PIPELINE__INGEST__BATCH_SIZE="4", PIPELINE__ENCODER__PRECISION="fp32")  # fmt: skip
    service = start_service(env, tmp_path / "first.log")
    try:
        with service.client() as http:
            job = http.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(big)}}).json()
            running = _poll(http, job["id"], lambda j: j["progress"]["done"] >= 12)
        assert running["state"] == "running" and running["progress"]["done"] < len(many), running
    finally:
        assert service.stop(signal.SIGKILL) == -signal.SIGKILL
    service = start_service(env, tmp_path / "second.log")
    try:
        with service.client() as http:
            done = _poll(http, job["id"], lambda j: j["state"] in ("succeeded", "failed", "cancelled"))
            stats = http.get("/v1/stats").json()
    finally:
        service.stop()
    assert done["state"] == "succeeded" and done["resumed"] == 1, done
    # Every product counted once as added, though the killed run had written some it could not report.
    assert done["result"] == {"added": len(many), "updated": 0, "unchanged": 0, "rejected": 0}
    assert done["progress"] == {"done": len(many), "total": len(many)}
    assert stats["mongo"]["products"] == len(many) and stats["in_agreement"], stats
    assert stats["qdrant"]["points"] == sum(len(r["images"]) for r in many)  # no duplicate point
    assert "interrupted" in (tmp_path / "second.log").read_text()
