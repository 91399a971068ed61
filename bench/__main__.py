"""``python -m bench <name>``: run one benchmark and print its table."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def main() -> None:
    """Benchmarks of the project; each prints a table and saves it to bench/results/."""


@app.command()
def encoders(
    repeat: int = typer.Option(20, help="timed calls at batch 1 (batch 16 uses a quarter)"),
    threads: int = typer.Option(0, help="intra-op threads for torch and onnxruntime (0 = all cores)"),
) -> None:
    """PyTorch eager vs ONNX FP32/FP16/INT8: latency at batch 1 and 16, throughput, RSS."""
    from bench.encoders import run

    run(repeat_small=repeat, repeat_large=max(3, repeat // 4), threads=threads)


if __name__ == "__main__":
    app()
