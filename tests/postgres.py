"""A real PostgreSQL (Debian's package, installed by scripts/system-deps.sh) in a temporary folder on a free
loopback port, for the SQL-source tests. PostgreSQL refuses to run as root, so as root the cluster belongs to
the ``postgres`` user and its commands run as that user."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """A cluster in a folder of its own under the system temp folder (pytest's are private to root, and the
    server runs as ``postgres``); ``stop`` removes it."""

    def __init__(self) -> None:
        initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not initdb or not self.pg_ctl:
            pytest.skip("PostgreSQL is not installed (scripts/system-deps.sh installs Debian's postgresql)")
        root = Path(tempfile.mkdtemp(prefix="pg-"))
        self.root, self.port = root, _free_port()
        self.data, self.log = root / "data", root / "log"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(root, self.user)
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = ["runuser", "-u", self.user, "--", *args] if self.user else list(args)
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        assert self.pg_ctl is not None
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        assert self.pg_ctl is not None
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
