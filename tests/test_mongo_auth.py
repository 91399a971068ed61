"""MongoDB as deployed: authentication on, the service as a readWrite-only user; events expire (TTL index; the
test server's TTL monitor runs every second instead of every minute)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from pipeline.errors import StoreUnavailable
from pipeline.stores.keys import Scope
from pipeline.stores.mongod import _library_path, _port_open, free_port, mongod_binary
from tests.conftest import make_settings

DEPLOY = Path(__file__).parent.parent / "deploy"
PASSWORD = "p@ss:w/rd%?#[]"  # every character a URI would need escaped


@pytest.fixture
def auth_mongod(tmp_path):
    """A real mongod with --auth, a root user, and the application user exactly as deploy/mongo-init grants it."""
    port = free_port()
    args = ["--auth", "--dbpath", str(tmp_path), "--bind_ip", "127.0.0.1", "--port", str(port)]
    args += ["--logpath", str(tmp_path / "mongod.log"), "--setParameter", "ttlMonitorSleepSecs=1"]
    env = {**os.environ, "LD_LIBRARY_PATH": _library_path()}
    proc = subprocess.Popen([str(mongod_binary()), *args], env=env, stdout=subprocess.DEVNULL)
    try:
        for _ in range(400):
            if _port_open(port):
                break
            time.sleep(0.05)
        script = (DEPLOY / "mongo-init" / "app-user.js").read_text()
        roles = re.findall(r'role:\s*"(\w+)",\s*db:\s*appDb\.getName\(\)', script)
        assert roles == ["readWrite"], script  # the script grants readWrite on the app database, nothing more

        async def users() -> None:
            # The localhost exception lets the first user be created; then root creates the app user.
            async with AsyncMongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true") as c:
                await c.admin.command("createUser", "root", pwd="root-pw", roles=["root"])
            uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
            async with AsyncMongoClient(uri, username="root", password="root-pw") as root:
                grants = [{"role": r, "db": "shop"} for r in roles]
                await root["shop"].command("createUser", "app", pwd=PASSWORD, roles=grants)

        asyncio.run(users())
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_the_service_runs_as_a_readwrite_only_user(auth_mongod, model_repository, tmp_path, catalog):
    from pipeline.stack import open_stack

    def settings(username: str, password: str):
        config = make_settings(model_repository, "edge", tmp_path, auth_mongod)
        update = {"database": "shop", "username": username, "password": SecretStr(password)}
        return config.model_copy(update={"mongo": config.mongo.model_copy(update=update)})

    async with open_stack(settings(username="app", password=PASSWORD)) as stack:
        report = await stack.ingest.ingest(catalog)
        assert report.added > 0 and not report.rejected
        assert (await stack.search.search_text("red mug")).hits
        await stack.keys.create("ui", Scope.SEARCH)
        first = sorted(await stack.index.product_ids())[0]
        assert (await stack.ingest.delete([first]))[0] == [first]
        await stack.ingest.reindex()
        info = await stack.mongo.events.index_information()
        assert info["ts_1"]["expireAfterSeconds"] == 30 * 86400
    # A changed retention replaces the index with only readWrite rights; 0 keeps events forever.
    async with open_stack(settings(username="app", password=PASSWORD)) as stack:
        await stack.mongo.ensure_indexes(events_retention_s=3600)
        assert (await stack.mongo.events.index_information())["ts_1"]["expireAfterSeconds"] == 3600
        await stack.mongo.ensure_indexes(events_retention_s=0)
        assert "expireAfterSeconds" not in (await stack.mongo.events.index_information())["ts_1"]
        await stack.mongo.ensure_indexes(events_retention_s=60)
        now = datetime.now(UTC)
        await stack.mongo.events.delete_many({})
        await stack.mongo.insert_events([{"ts": now - timedelta(minutes=5), "kind": "old"}, {"ts": now, "kind": "new"}])
        for _ in range(150):
            kinds = {e["kind"] async for e in stack.mongo.events.find({})}
            if kinds == {"new"}:
                break
            await asyncio.sleep(0.1)
        assert kinds == {"new"}  # MongoDB removed the event past the retention, kept the recent one
        # The app user reaches its own database only.
        with pytest.raises(Exception, match="not authorized"):
            await stack.mongo._client["other"]["x"].insert_one({"x": 1})
    # A wrong password is a clear StoreUnavailable, not a traceback.
    with pytest.raises(StoreUnavailable, match="Authentication failed"):
        async with open_stack(settings(username="app", password="wrong")) as stack:
            await stack.mongo.get_products(["x"])
