"""``python -m pipeline events import FILE``: load a history of shopper events (a CSV or JSONL export of views,
carts and purchases) through the service when one runs, in-process otherwise."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from pipeline.cli_common import JsonOption, RepoOption, app, dispatch, err, guarded, run_with_stack, settings_for
from pipeline.errors import InvalidInput
from pipeline.recommend.events import ShopperEvent
from pipeline.recommend.models import EventsResult
from pipeline.schemas import describe_errors

if TYPE_CHECKING:
    from pipeline.client import ServiceClient
    from pipeline.stack import Stack

events_app = typer.Typer(no_args_is_help=True, help="Shopper events: views, carts, purchases.")
app.add_typer(events_app, name="events")

# Column names exports use, and event names, mapped to ours (as the recommender's CSVs have them).
COLUMNS = {
    "buyer_id": ("buyer_id", "distinct_id", "user_id", "customer_id", "visitor_id", "visitorid", "buyer"),
    "product_id": ("product_id", "item_id", "itemid", "sku", "product"),
    "type": ("type", "event", "event_name", "event_type", "name"),
    "ts": ("ts", "timestamp", "time", "event_time", "date"),
    "event_id": ("event_id", "id", "insert_id", "$insert_id"),
}
EVENT_NAMES = {
    "view": "view", "viewed": "view", "product_view": "view", "page_view": "view", "pageview": "view",
    "view_item": "view", "product viewed": "view", "click": "click", "clicked": "click", "select_item": "click",
    "add_to_cart": "add_to_cart", "addtocart": "add_to_cart", "add-to-cart": "add_to_cart", "cart": "add_to_cart",
    "added to cart": "add_to_cart", "product added": "add_to_cart", "purchase": "purchase", "buy": "purchase",
    "order": "purchase", "transaction": "purchase", "order completed": "purchase", "purchased": "purchase",
}  # fmt: skip
BATCH = 1000


def _timestamp(value: Any) -> dt.datetime | None:
    """ISO 8601, or seconds / milliseconds since the epoch."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt.datetime.fromtimestamp(number / 1000 if number > 1e11 else number, dt.UTC)


def _pick(raw: dict[str, Any], field: str) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in raw.items()}
    return next((lowered[c] for c in COLUMNS[field] if lowered.get(c) not in (None, "")), None)


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
                for line_no, line in enumerate(fh, start=1):
                    if line.strip():
                        try:
                            value = json.loads(line)
                        except json.JSONDecodeError as exc:
                            yield line_no, None, f"invalid JSON ({exc.msg})"
                            continue
                        yield (line_no, value, None) if isinstance(value, dict) else (line_no, None, "not an object")
            else:
                reader = csv.DictReader(fh)
                for raw in reader:
                    yield reader.line_num, raw, None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason})") from None


def parse_events(path: Path) -> Iterator[tuple[int, ShopperEvent | None, str | None]]:
    """(line, event, error) for each row of an events file."""
    for line, raw, error in _rows(path):
        if raw is None:
            yield line, None, error
            continue
        name = str(_pick(raw, "type") or "").strip().lower()
        kind = EVENT_NAMES.get(name)
        if kind is None:
            yield line, None, f"unknown event {name!r} (view, click, add_to_cart, purchase)"
            continue
        try:
            ts = _timestamp(_pick(raw, "ts"))
            buyer, product = str(_pick(raw, "buyer_id") or ""), str(_pick(raw, "product_id") or "")
            event_id = _pick(raw, "event_id")
            if event_id is None and ts is not None:  # the same row imported twice is stored once
                event_id = hashlib.sha256(f"{buyer}\x00{product}\x00{kind}\x00{ts.isoformat()}".encode()).hexdigest()[
                    :32
                ]
            event = ShopperEvent(buyer_id=buyer, product_id=product, type=kind, ts=ts,  # type: ignore[arg-type]
                                 event_id=None if event_id is None else str(event_id))  # fmt: skip
        except ValueError as exc:
            message = describe_errors(exc.errors(), whole="row") if isinstance(exc, ValidationError) else str(exc)
            yield line, None, message
            continue
        yield line, event, None


@events_app.command("import")
@guarded
def import_events(
    path: Annotated[
        Path,
        typer.Argument(help="Events: CSV with a header (buyer/distinct id, product id, event, timestamp) or JSONL"),
    ],
    model_repository: RepoOption = None,
    as_json: JsonOption = False,
) -> None:
    """Load a history of shopper events. Rows naming no product are counted and skipped; bad rows are listed.
    Importing the same file again stores nothing twice (rows without an event id get one from their content)."""
    settings = settings_for(model_repository)
    rows = list(parse_events(path))
    bad = [(line, error or "invalid row") for line, event, error in rows if event is None]
    good = [(line, event) for line, event, _ in rows if event is not None]
    batches = [good[i : i + BATCH] for i in range(0, len(good), BATCH)]

    def add(total: EventsResult, part: EventsResult, lines: list[int]) -> None:
        total.accepted += part.accepted
        total.duplicates += part.duplicates
        total.unknown_products += part.unknown_products
        bad.extend((lines[e.index], e.message) for e in part.rejected)

    async def in_process(stack: Stack) -> EventsResult:
        total = EventsResult(accepted=0, duplicates=0, unknown_products=0)
        for batch in batches:
            add(total, await stack.recommend.record([e for _, e in batch]), [line for line, _ in batch])
        return total

    def remote(client: ServiceClient) -> EventsResult:
        total = EventsResult(accepted=0, duplicates=0, unknown_products=0)
        for batch in batches:
            body = {"events": [e.model_dump(mode="json", exclude_none=True) for _, e in batch]}
            add(total, EventsResult.model_validate(client.post("/v1/events", body)), [line for line, _ in batch])
        return total

    total = dispatch(settings, in_process, remote)
    bad.sort()
    if as_json:
        out = {**total.model_dump(exclude={"rejected"}), "rejected": [{"line": n, "reason": r} for n, r in bad]}
        sys.stdout.write(json.dumps(out) + "\n")
        return
    err.print(f"[green]imported[/green] {path}: {total.accepted} stored, {total.duplicates} already there, "
              f"{total.unknown_products} for unknown products, {len(bad)} rejected")  # fmt: skip
    for line, reason in bad[:20]:
        err.print(f"  line {line}: {reason}", markup=False, soft_wrap=True)
    if len(bad) > 20:
        err.print(f"  … and {len(bad) - 20} more (use --json)")


@app.command("recommend-eval")
@guarded
def recommend_eval(
    events: Annotated[
        Path | None,
        typer.Option(
            "--events",
            help="A real events file (as `events import` reads) on the configured data; "
            "default: simulated shoppers on the demo catalog",
        ),
    ] = None,
    demo: Annotated[Path, typer.Option(help="The demo folder `make demo` filled (simulated shoppers)")] = Path(
        "data/demo"
    ),
    shoppers: Annotated[int, typer.Option(min=1, help="Simulated shoppers")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the simulated shoppers (and of the random method)")] = 1,
    holdout: Annotated[int, typer.Option(min=1, help="Held-out last purchases per buyer")] = 1,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=100, help="Recommendations scored per buyer")] = 10,
    sweep: Annotated[bool, typer.Option(help="Also score other half-lives and event weightings")] = False,
    model_repository: RepoOption = None,
    as_json: JsonOption = False,
) -> None:
    """Offline evaluation: hold out each buyer's last purchase(s), recommend from the history before them with
    the service's own code, and score recall@k and NDCG@k of the buyer vector (as configured, without event
    weights, without recency), popularity and random. Opens the stores itself: stop a service running on them."""
    from pipeline.recommend.evaluate import EvalReport, evaluate, evaluate_simulated

    if events is None:
        if not (demo / "model_repository").is_dir() or not (demo / "qdrant").is_dir():
            raise InvalidInput(f"{demo}: no demo model and index; run `make demo` first, or give --events FILE")
        settings = settings_for(model_repository or demo / "model_repository")
        settings.qdrant.path, settings.mongo.data_dir = demo / "qdrant", demo / "mongo"
    else:
        settings = settings_for(model_repository)
        rows = list(parse_events(events))
        real = [e for _, e, _ in rows if e is not None]
        if not real:
            raise InvalidInput(f"{events}: no readable events ({len(rows)} rows)")
    from pipeline.client import ServiceClient

    client = ServiceClient.discover(settings)
    if client is not None:
        client.close()
        raise InvalidInput("a service runs on this data; the evaluation opens the stores itself: stop it first")

    async def work(stack: Stack) -> EvalReport:
        if events is None:
            return await evaluate_simulated(stack, shoppers, seed, k=top_k, holdout=holdout, sweep=sweep)
        return await evaluate(stack, real, source=str(events), k=top_k, holdout=holdout, sweep=sweep, seed=seed)

    report = run_with_stack(settings, work)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict()) + "\n")
        return
    print_report(report)


def print_report(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    headers, rows = report.table()
    table = Table(title=f"Recommendations, offline: {report.source}")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(120, Console().width)).print(table)
    Console(highlight=False).print(report.summary(), markup=False, soft_wrap=True)
