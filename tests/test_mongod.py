"""The managed mongod shared by several processes on one data folder."""

from __future__ import annotations

import subprocess
import sys

from pipeline.stores.mongod import ManagedMongod, _port_open


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
