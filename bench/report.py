"""``make bench``: every benchmark of the project in one run, stitched into one report.

Encoders per precision (vs PyTorch eager), end-to-end queries and ingestion (vs eager + numpy + dict), the
search stage (vs numpy), the soak, the HTTP service under load (vs a seed-style FastAPI peer), and Triton vs
in-process, each beside its baseline with a ratio, under a header naming the machine, its cores and the date.
Written to bench/results/REPORT.md and printed.
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

SECTIONS = ["encoders", "search", "search_stage", "load", "http", "triton"]


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
        "depend on the weights). Medians (p50) and p99; ratios are the baseline's time over ours (>1: faster).\n"
    )


def run() -> None:
    # Each benchmark in a fresh process: no model, cache or allocator state carried from one into the next
    # (the soak's memory figures are those of a serving process, not of this one).
    start = time.perf_counter()
    for command in ("encoders", "search", "stage", "load", "http", "triton"):
        subprocess.run([sys.executable, "-m", "bench", command], check=True)
    parts = [header()]
    for name in SECTIONS:
        path = RESULTS / f"{name}.md"
        if path.exists():
            parts.append(path.read_text().replace("### ", "## ", 1))
    parts.append(f"_The whole report took {time.perf_counter() - start:.0f} s._\n")
    report = "\n".join(parts)
    (RESULTS / "REPORT.md").write_text(report)
    print(report)
