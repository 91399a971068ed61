"""``python -m pipeline models ...``: the model registry, training jobs, activation (and rollback), retirement.

Through the running service when there is one; with none, on an in-process stack (jobs in the foreground).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.cli_common import JsonOption, app, dispatch, err, guarded
from pipeline.cli_jobs import finish_job, run_job
from pipeline.config import Settings
from pipeline.jobs.model import JobKind
from pipeline.lifecycle.registry import ModelVersion

if TYPE_CHECKING:
    from pipeline.client import ServiceClient
    from pipeline.stack import Stack

models_app = typer.Typer(no_args_is_help=True, help="Model versions: list, train, activate (or roll back), retire.")
app.add_typer(models_app, name="models")


def _figures(v: ModelVersion) -> str:
    valid = v.validation.get("all", {}) if v.validation else {}
    cand = valid.get("candidate", {})
    parts = []
    if cand:
        act = valid.get("active", {})
        parts.append(f"held-out MRR {cand.get('mrr', 0):.3f} vs {v.validation.get('active')} {act.get('mrr', 0):.3f}")
    if v.train:
        parts.append(f"trained on {v.train.get('pairs')}")
    if v.refused:
        parts.append(f"refused: {v.refused}")
    return "; ".join(parts)


@models_app.command("list")
@guarded
def list_models(as_json: JsonOption = False) -> None:
    """Every version: status, model, dimension, and its training and validation figures."""
    settings = Settings()

    async def here(stack: Stack) -> dict[str, Any]:
        from pipeline.lifecycle.monitor import generation_figures

        versions = [v.model_dump(mode="json") for v in await stack.registry.list()]
        return {"active": stack.gen.name, "versions": versions, "live": await generation_figures(stack.mongo)}

    def remote(client: ServiceClient) -> dict[str, Any]:
        out: dict[str, Any] = client.get("/v1/models")
        return out

    doc = dispatch(settings, here, remote)
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    for raw in doc["versions"]:
        v = ModelVersion.model_validate(raw)
        mark = "*" if v.version == doc["active"] else " "
        live = doc.get("live", {}).get(v.version)
        extra = f"; live: {live['queries']} queries, CTR@10 {live['ctr@10']}" if live else ""
        err.print(f"{mark} {v.version} [{v.status}] {v.name} dim {v.dim} ({', '.join(v.precisions)}) "
                  f"{_figures(v)}{extra}", markup=False, highlight=False)  # fmt: skip


@models_app.command("train")
@guarded
def train_job(
    base: Annotated[str | None, typer.Option(help="Version to fine-tune (default: the active one)")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Or a checkpoint folder")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    no_clicks: Annotated[bool, typer.Option("--no-clicks", help="Catalog pairs only")] = False,
    activate: Annotated[bool, typer.Option(help="Then build, validate and switch to it")] = False,
    force: Annotated[bool, typer.Option(help="With --activate: switch even when validation refuses")] = False,
    wait: Annotated[bool, typer.Option(help="Follow the job to its end")] = True,
    as_json: JsonOption = False,
) -> None:
    """A training job: the catalog's pairs and shoppers' clicks → a new candidate version (exported, gated)."""
    params = {"base": base, "checkpoint": checkpoint, "epochs": epochs, "clicks": not no_clicks,
              "activate": activate, "force": force}  # fmt: skip
    finish_job(run_job(Settings(), JobKind.TRAIN, params, wait), as_json)


@models_app.command("activate")
@guarded
def activate(
    version: Annotated[str, typer.Argument(help="The version to serve (a candidate, or a previous one: rollback)")],
    force: Annotated[bool, typer.Option(help="Switch even when validation refuses the candidate")] = False,
    wait: Annotated[bool, typer.Option(help="Follow the job to its end")] = True,
    as_json: JsonOption = False,
) -> None:
    """Build the version's collection in the background, validate it against the active one, switch."""
    finish_job(run_job(Settings(), JobKind.ACTIVATE, {"version": version, "force": force}, wait), as_json)


@models_app.command("add")
@guarded
def add(
    repository: Annotated[Path, typer.Argument(help="An exported model repository (python -m pipeline export)")],
    checkpoint: Annotated[Path | None, typer.Option(help="The checkpoint it was exported from")] = None,
) -> None:
    """Register an exported model as a candidate version (then: models activate VERSION)."""
    settings = Settings()

    async def here(stack: Stack) -> dict[str, Any]:
        from pipeline.lifecycle.activate import add_version

        return (await add_version(stack, repository, checkpoint)).model_dump(mode="json")

    def remote(client: ServiceClient) -> dict[str, Any]:
        body = {
            "repository": str(repository.resolve()),
            "checkpoint": str(checkpoint.resolve()) if checkpoint else None,
        }
        out: dict[str, Any] = client.post("/v1/models", body)
        return out

    doc = dispatch(settings, here, remote)
    err.print(f"[green]added[/green] {doc['version']} ({doc['name']}, dim {doc['dim']}): "
              f"python -m pipeline models activate {doc['version']}", markup=True, highlight=False)  # fmt: skip


@models_app.command("retire")
@guarded
def retire(version: Annotated[str, typer.Argument()]) -> None:
    """Drop a version's collection (not the active one's)."""
    settings = Settings()

    async def here(stack: Stack) -> dict[str, Any]:
        from pipeline.lifecycle.activate import retire as retire_version

        return (await retire_version(stack, version)).model_dump(mode="json")

    def remote(client: ServiceClient) -> dict[str, Any]:
        out: dict[str, Any] = client.post(f"/v1/models/{version}/retire", {})
        return out

    doc = dispatch(settings, here, remote)
    err.print(f"[green]retired[/green] {doc['version']}")
