"""The two servers of ``python -m bench http``: start, wait until ready, measure memory, stop.

Ours: ``python -m pipeline serve`` on the embedded default (onnxruntime INT8, Qdrant Edge, a managed mongod),
or a variant of it (FP32, cache off, cross-request batching off), its stores filled beforehand in-process
exactly as ``bench.search._fill`` does. The peer: ``python -m bench.peer``
(eager CLIP + FAISS + dict) over the same products and vectors. Each runs in its own process, logging to a
file beside its data; both are stopped with SIGTERM (then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent  # the repository: both servers run from here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    log_fh: IO[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    mongo_dir: Path | None = None  # ours: the managed mongod's data folder (its pid is in mongod.port.json)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def mongod_pid(self) -> int | None:
        if self.mongo_dir is None:
            return None
        try:
            pid = int(json.loads((self.mongo_dir / "mongod.port.json").read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def mongod_users(self) -> list[int]:
        """Live processes other than this server registered as users of its mongod (``mongod.users/``)."""
        if self.mongo_dir is None:
            return []
        pids = (path.name.split(".", 1)[0] for path in (self.mongo_dir / "mongod.users").glob("*"))
        return [int(p) for p in pids if p.isdigit() and int(p) != self.proc.pid and psutil.pid_exists(int(p))]

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) of the server process and its descendants, mongod included."""
        total = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return total
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
        return total

    def rss_mb(self) -> tuple[float, float, float | None]:
        """RSS of the server process and its descendants except mongod, the part of it that maps files (shared
        libraries, memory-mapped storage: page cache the kernel can reclaim), and mongod's own RSS (None: no mongod).
        """
        mongod = self.mongod_pid()
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0, 0.0, None
        total, files, mongo = 0, 0, None
        for p in procs:
            try:
                memory = p.memory_info()
            except psutil.Error:
                continue
            if p.pid != mongod:
                total += memory.rss
                files += getattr(memory, "shared", 0)  # Linux only
        if mongod is not None:
            try:
                mongo = psutil.Process(mongod).memory_info().rss / 2**20
            except psutil.Error:
                mongo = None
        return total / 2**20, files / 2**20, mongo


def _spawn(name: str, cmd: list[str], env: dict[str, str], log: Path, port: int) -> Server:
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = log.open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Server(name, proc, f"http://127.0.0.1:{port}", log, fh)


def wait_ready(server: Server, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode} before it was ready; last lines of its log:\n"
                + server.log_tail()
            )
        try:
            if httpx.get(f"{server.url}/health/ready", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{server.name} not ready within {timeout_s:.0f} s; last lines of its log:\n{server.log_tail()}")


def stop(server: Server | None, grace_s: float = 30.0) -> None:
    """SIGTERM, wait (ours flushes its event log), SIGKILL if it overstays; then make sure its mongod is gone."""
    if server is None:
        return
    mongod = server.mongod_pid()
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            print(f"{server.name}: still running {grace_s:.0f} s after SIGTERM; killing it", file=sys.stderr)
            server.proc.kill()
            server.proc.wait()
    server.log_fh.close()
    if mongod is not None and psutil.pid_exists(mongod) and not server.mongod_users():
        # The service stops its mongod on SIGTERM when no other process uses it; one left behind is stopped here.
        deadline = time.monotonic() + 20
        while psutil.pid_exists(mongod) and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            left = psutil.Process(mongod)
            if "mongod" in left.name():
                print(f"{server.name}: its mongod ({mongod}) outlived it; stopping it", file=sys.stderr)
                left.terminate()
        except psutil.Error:
            pass


def fill_ours(repo: Path, root: Path, n: int) -> None:
    """The stores filled in-process through their own APIs (``bench.search._fill``), then closed.

    The stores record the model, not the precision, so every variant of ours is served from the same fill.
    """
    from bench.search import _fill, _settings
    from pipeline.stack import open_stack

    async def fill() -> None:
        async with open_stack(_settings(repo, root)) as stack:
            await _fill(stack, n, stack.encoder.info.dim)

    asyncio.run(fill())


def start_ours(
    repo: Path, root: Path, name: str = "ours", precision: str = "int8", cache: bool = True, batching: bool = True
) -> Server:
    """``python -m pipeline serve`` over the stores under ``root``; auth key from the service file it writes.

    ``cache=False`` turns the query-embedding cache off; ``batching=False`` the in-process encoder's
    cross-request batching (INT8 runs one input per model call either way).
    """
    port = free_port()
    service_file = root / "service.json"  # beside the qdrant folder
    service_file.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PIPELINE__ENCODER__MODEL_REPOSITORY": str(repo),
        "PIPELINE__ENCODER__PRECISION": precision,
        "PIPELINE__QDRANT__PATH": str(root / "qdrant"),
        "PIPELINE__MONGO__DATA_DIR": str(root / "mongo"),
        "PIPELINE__API__SERVICE_FILE": str(service_file),
    }
    if not cache:
        env["PIPELINE__CACHE__MAX_ENTRIES"] = "0"
    if not batching:
        env["PIPELINE__ENCODER__CROSS_REQUEST_BATCHING"] = "false"
    cmd = [sys.executable, "-m", "pipeline", "serve", "--host", "127.0.0.1", "--port", str(port)]
    server = _spawn(name, cmd, env, root / f"serve-{name}.log", port)
    server.mongo_dir = root / "mongo"
    try:
        wait_ready(server)
        info = json.loads(service_file.read_text())
        server.headers = {"X-API-Key": str(info["token"])}
        if int(info.get("pid", server.proc.pid)) != server.proc.pid:
            print(f"ours: service file names pid {info['pid']}, started pid {server.proc.pid}", file=sys.stderr)
    except Exception:
        stop(server)
        raise
    return server


def start_peer(checkpoint: Path, n: int, precision: str, root: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.peer", "--port", str(port), "--products", str(n)]
    cmd += ["--precision", precision, "--checkpoint", str(checkpoint)]
    server = _spawn(f"peer {precision}", cmd, dict(os.environ), root / f"peer-{precision}.log", port)
    try:
        wait_ready(server)
    except Exception:
        stop(server)
        raise
    return server
