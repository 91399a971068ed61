"""Timing and table helpers shared by the benchmarks."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache"


def median_ms(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in milliseconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def machine_line() -> str:
    return (
        f"{datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}"
    )


def show(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], name: str, notes: str = "") -> str:
    """Print a rich table and save the same table as markdown to bench/results/<name>.md; return the markdown."""
    table = Table(title=title)
    for h in headers:
        table.add_column(h, justify="right" if h != headers[0] else "left")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console(width=220).print(table)
    md = [f"### {title}", "", f"_{machine_line()}_", ""]
    md.append("| " + " | ".join(headers) + " |")
    md.append("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |")
    md += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    if notes:
        md += ["", notes]
    text = "\n".join(md) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    if notes:
        Console(width=220).print(notes)
    return text
