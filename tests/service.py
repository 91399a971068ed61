"""The real service in a subprocess: ``python -m pipeline serve`` on a free loopback port, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipeline.stores.mongod import free_port


@dataclass
class RunningService:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def client(self, key: str | None = None, **kwargs: object) -> httpx.Client:
        headers = {"X-API-Key": key if key is not None else self.token}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal it and wait; one that overstays is killed (never left running after its test) and the
        timeout raised."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def service_env(model_repository: Path, qdrant: Path, mongo_uri: str, database: str, **extra: str) -> dict[str, str]:
    return {
        "PIPELINE__ENCODER__MODEL_REPOSITORY": str(model_repository),
        "PIPELINE__QDRANT__PATH": str(qdrant),
        "PIPELINE__MONGO__URI": mongo_uri,
        "PIPELINE__MONGO__DATABASE": database,
        **extra,
    }


def start_service(env: dict[str, str], log: Path, timeout: float = 90) -> RunningService:
    """Start the service with ``env`` on top of this process's environment; wait until it is ready."""
    port = free_port()
    full = {**os.environ, **env}
    full.pop("PIPELINE__API__URL", None)
    full.pop("PIPELINE__API__KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--port", str(port)],
        env=full, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),  # noqa: SIM115
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    service_file = Path(env["PIPELINE__QDRANT__PATH"]).parent / "service.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the service exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200 and service_file.exists():
                token = json.loads(service_file.read_text())["token"]
                return RunningService(url, token, proc, log, env)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the service did not become ready:\n{log.read_text()[-3000:]}")


def error_message(response: httpx.Response, status: int) -> str:
    """The message of an error answer, after checking its status and that its body is the error shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in response.text
    return str(body["error"]["message"])


def jpeg(color: str = "red", category: str = "mug", seed: int = 3) -> bytes:
    from tests.catalogs import draw
    from tests.images import encode

    return encode(draw(color, category, seed), "JPEG")
