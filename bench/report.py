"""``make bench``: every benchmark of the project in one run, stitched into one report.

Encoders per runtime and precision (INT8 batched and per-row), end-to-end queries and ingestion (the stack vs
eager + numpy + dict, at INT8 and FP32), bulk ingest over HTTP (pipelined and sequential) vs the raw encoder,
the search stage (vs numpy), the soak, the HTTP service under load (and its variants, vs a seed-style FastAPI
peer at FP32 and INT8), Triton vs in-process, and recommendations (buyer encoding + retrieval, over HTTP and
in-process, vs numpy), under a header naming the machine, its cores and the date.
Each ratio divides two rows of the same run that differ in one named thing. Under each table, the command that
reproduces it. Written to bench/results/REPORT.md and printed.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata

from bench.common import RESULTS

# (command, the tables it writes to bench/results/), in report order.
SECTIONS = [
    ("encoders", ["encoders"]),
    ("int8-kernels", ["int8_kernels"]),
    ("search", ["search", "search_ingest"]),
    ("bulk-ingest", ["bulk_ingest"]),
    ("stage", ["search_stage"]),
    ("scale", ["scale"]),
    ("load", ["load"]),
    ("http", ["http", "http_ratios"]),
    ("triton", ["triton"]),
    ("recommend", ["recommend"]),
    ("capacity", ["capacity"]),
    ("languages", ["languages"]),
]


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def header() -> str:
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("onnxruntime", "torch", "qdrant-edge-py", "pymongo"))
    return (
        f"# Benchmark report\n\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {os.cpu_count()} cores ({_cpu()}) · "
        f"Python {platform.python_version()} · {versions}\n\nViT-B/32 shapes with random weights (latency does not "
        "depend on the weights). Medians (p50) and p99. Every ratio divides two rows of the same run that differ "
        "in one named thing (runtime or architecture, precision, cache, batching); >1: the first named is faster.\n"
    )


def run(only: tuple[str, ...] = (), extra: dict[str, list[str]] | None = None, stitch: bool = False) -> None:
    """Run the sections (all, or ``only`` those commands) and stitch every table found into REPORT.md.

    ``extra``: options per command (``{"http": ["--seconds", "30"]}``), quoted in its reproduce line.
    ``stitch``: run nothing, only stitch the tables saved by earlier runs (each under its own run's line).
    """
    # Each benchmark in a fresh process: no model, cache or allocator state carried from one into the next
    # (the soak's memory figures are those of a serving process, not of this one).
    extra = extra or {}
    start = time.perf_counter()
    took: dict[str, str] = {}
    for command, _ in SECTIONS:
        if stitch or (only and command not in only):
            continue
        t, load, begun = time.perf_counter(), os.getloadavg()[0], datetime.now(UTC)
        subprocess.run([sys.executable, "-m", "bench", command, *extra.get(command, [])], check=True)
        # The 1-minute load average before and after: above the core count, other work shared the machine.
        took[command] = (
            f"started {begun:%Y-%m-%d %H:%M} UTC, {time.perf_counter() - t:.0f} s, load average {load:.1f} "
            f"before, {os.getloadavg()[0]:.1f} after"
        )
        (RESULTS / f"{command}.run.txt").write_text(took[command])
    parts = [header()]
    for command, names in SECTIONS:
        found = [RESULTS / f"{name}.md" for name in names if (RESULTS / f"{name}.md").exists()]
        for path in found:
            parts.append(path.read_text().replace("### ", "## ", 1))
        if found:
            line = " ".join([".venv/bin/python -m bench", command, *extra.get(command, [])])
            ran = RESULTS / f"{command}.run.txt"
            when = took.get(command) or (f"earlier run: {ran.read_text()}" if ran.exists() else "an earlier run")
            parts.append(f"Reproduce: `{line}` ({when}).\n")
    if took:
        parts.append(f"_This report's benchmarks took {time.perf_counter() - start:.0f} s._\n")
    else:
        parts.append("_Stitched from saved tables: each was measured in the run named under it._\n")
    report = "\n".join(parts)
    (RESULTS / "REPORT.md").write_text(report)
    print(report)
