"""The managed mongod shared by several processes on one data folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.stores.mongod import ManagedMongod, _is_mongod, _port_open, free_port


def test_managed_mongod_stops_when_its_last_user_leaves(tmp_path):
    """The process that started mongod leaving must not stop it under another that still uses it."""
    first = ManagedMongod(tmp_path)
    uri = first.start_sync()
    port = first.port
    second = ManagedMongod(tmp_path)
    try:
        assert second.start_sync() == uri and not second.owned
        first.stop_sync()  # the starter leaves first: the server stays for `second`
        assert _port_open(port)
        # Another process joins and leaves; a user that died without leaving is pruned by its pid.
        code = f"from pipeline.stores.mongod import ManagedMongod as M; m = M({str(tmp_path)!r}); m.start_sync()"
        subprocess.run([sys.executable, "-c", code + "; m.stop_sync()"], check=True, timeout=60)
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)  # exits still registered
        assert _port_open(port)
    finally:
        second.stop_sync()  # the last live user: stops it, though another process started it
    assert not _port_open(port)
    assert not (tmp_path / "mongod.port.json").exists()


def test_a_user_naming_the_folder_another_way_stops_it(tmp_path, monkeypatch):
    """The last user stops the server though it named the data folder relatively and the starter did not."""
    first = ManagedMongod(tmp_path / "data")
    first.start_sync()
    port = first.port
    monkeypatch.chdir(tmp_path)
    second = ManagedMongod(Path("data"))
    try:
        assert second.start_sync() == first.uri
        first.stop_sync()
        assert _port_open(port)
    finally:
        second.stop_sync()
    assert not _port_open(port)


def test_a_stale_port_file_never_stops_a_stranger(tmp_path):
    """A port file left by a crash whose pid now belongs to another process: that process is left alone."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "mongod.port.json").write_text(json.dumps({"pid": stranger.pid, "port": free_port()}))
        m = ManagedMongod(tmp_path)
        m.port = 1  # as if it had joined
        m.stop_sync()
        assert stranger.poll() is None
        assert not _is_mongod(stranger.pid, tmp_path / "db", 1)
        assert not (tmp_path / "mongod.port.json").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_a_server_started_with_a_relative_folder_is_still_recognised(tmp_path, monkeypatch):
    """A mongod launched before data folders were resolved has a relative --dbpath: it is still ours to stop."""
    monkeypatch.chdir(tmp_path)
    first = ManagedMongod(Path("data"))
    monkeypatch.setattr(first, "_dbpath", lambda: Path("data") / "db")  # as older versions launched it
    first.start_sync()
    port = first.port
    second = ManagedMongod(tmp_path / "data")
    try:
        assert second.start_sync() == first.uri
        first._proc = None  # leaves without stopping it, as a process that exited would
        first.stop_sync()
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")  # the last user runs in another folder than the server
    finally:
        second.stop_sync()
    assert not _port_open(port)
