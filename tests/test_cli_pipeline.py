"""The pipeline CLI on the embedded default, as a user runs it: the CLI starts its own mongod and Qdrant Edge."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.catalogs import draw, write_bad_catalog
from tests.images import encode


def cli(cwd, *args, check=True):
    env = {**os.environ, "PIPELINE__ENCODER__PRECISION": "int8"}
    env.pop("MONGODB_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed: {proc.stderr}")
    return proc


def test_ingest_search_delete_status_on_embedded_default(model_repository, catalog, tmp_path):
    repo = ["--model-repository", str(model_repository)]
    out = json.loads(cli(tmp_path, "ingest", str(catalog), *repo, "--json").stdout)
    assert (out["added"], out["rejected"]) == (24, [])
    assert (tmp_path / "data" / "qdrant").is_dir() and (tmp_path / "data" / "mongo" / "db").is_dir()
    assert not (tmp_path / "data" / "mongo" / "mongod.port.json").exists()  # its mongod was stopped on exit

    again = json.loads(cli(tmp_path, "ingest", str(catalog), *repo, "--json").stdout)
    assert again["unchanged"] == 24

    res = json.loads(
        cli(tmp_path, "search", "--text", "red mug", "--top-k", "5", "--category", "mug", *repo, "--json").stdout
    )
    assert len(res["hits"]) == 5 and all(h["product"]["category"] == "mug" for h in res["hits"])
    photo = tmp_path / "q.png"
    photo.write_bytes(encode(draw("red", "shirt", 3), "PNG"))
    res = json.loads(cli(tmp_path, "search", "--image", str(photo), *repo, "--json").stdout)
    assert res["kind"] == "image" and len(res["hits"]) == 10
    table = cli(tmp_path, "search", "--product-id", "mug-red-0", "--top-k", "3", *repo)
    assert "product search: 3 products" in table.stdout and "mug-red-0 " not in table.stdout

    proc = cli(tmp_path, "delete", "mug-red-0", "nope", *repo, check=False)
    assert proc.returncode == 1 and "deleted 1 product" in proc.stderr and "nope" in proc.stderr
    status = json.loads(cli(tmp_path, "status", *repo, "--json").stdout)
    assert status["mongo"]["products"] == 23 and status["qdrant"]["products"] == 23 and status["in_agreement"]
    assert cli(tmp_path, "reindex", *repo).returncode == 0


def test_cli_errors_are_one_line(model_repository, catalog, tmp_path):
    repo = ["--model-repository", str(model_repository)]
    cli(tmp_path, "ingest", str(catalog), *repo, "--json")
    cases = [
        (["search", "--product-id", '{"$gt": ""}'], "unknown product id"),
        (["search", "--text", "  "], "empty text"),
        (["search", "--text", "a", "--image", "b.jpg"], "exactly one of"),
        (["search", "--image", str(tmp_path / "missing.jpg")], "cannot read"),
        (["ingest", str(tmp_path / "nope.jsonl")], "no such catalog file"),
    ]
    for args, message in cases:
        proc = cli(tmp_path, *args, *repo, check=False)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    bad, expected = write_bad_catalog(tmp_path / "bad")
    out = json.loads(cli(tmp_path, "ingest", str(bad), *repo, "--json").stdout)
    assert sorted(r["line"] for r in out["rejected"]) == sorted(expected)
