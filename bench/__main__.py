"""``python -m bench <name>``: run one benchmark and print its table."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def main() -> None:
    """Benchmarks of the project; each prints a table and saves it to bench/results/."""


@app.command()
def encoders(
    repeat: int = typer.Option(20, help="timed calls at batch 1 (batch 32 uses a quarter)"),
    threads: int = typer.Option(0, help="intra-op threads for torch and onnxruntime (0 = all cores)"),
) -> None:
    """PyTorch eager FP32/INT8 vs ONNX FP32/FP16/INT8 (INT8 batched and per-row): batch 1 and 32, RSS."""
    from bench.encoders import run

    run(repeat_small=repeat, repeat_large=max(3, repeat // 4), threads=threads)


@app.command()
def search(
    repeat: int = typer.Option(60, help="queries per row"),
    sizes: str = typer.Option("1000,10000", help="catalog sizes, comma separated"),
    ingest: int = typer.Option(200, help="products in the ingestion-rate run"),
) -> None:
    """End-to-end query latency (p50/p99) and ingestion rate, stack vs PyTorch eager + numpy + dict, INT8 and FP32."""
    from bench.e2e import run

    run(tuple(int(s) for s in sizes.split(",")), repeat, ingest)


@app.command()
def stage(
    repeat: int = typer.Option(100, help="queries per row"),
    sizes: str = typer.Option("10000,100000", help="vector counts, comma separated"),
) -> None:
    """The vector search alone: Qdrant Edge vs qdrant-client local mode vs numpy, filtered and not."""
    from bench.search import run_stage

    run_stage(tuple(int(s) for s in sizes.split(",")), repeat)


@app.command()
def scale(
    sizes: str = typer.Option("10000,100000", help="catalog sizes in products, comma separated (1000000: ~1 h)"),
    engines: str = typer.Option(
        "exact,hnsw,int8,faiss-hnsw,faiss-ivf",
        help="rows to run, comma separated (the Qdrant Edge configurations "
        "exact, hnsw, int8: HNSW + INT8 + rescore, int8-disk: the same with the vectors on disk; "
        "faiss-hnsw, faiss-ivf)",
    ),
) -> None:
    """The vector index as the catalog grows: Qdrant Edge exact / HNSW / HNSW+INT8 vs FAISS HNSW and IVF."""
    from bench.scale import run

    run(tuple(int(s) for s in sizes.split(",")), tuple(e.strip() for e in engines.split(",")))


@app.command()
def multilingual(
    demo: str = typer.Option("data/demo", help="make demo's folder (its repository with the distilled text tower)"),
) -> None:
    """Arabic and English held-out queries, the demo CLIP's text tower vs the distilled multilingual student."""
    from pathlib import Path

    from bench.multilingual import run

    run(Path(demo))


@app.command()
def capacity(
    measure_mongo: bool = typer.Option(True, help="measure the mongod read rate here (else that column is n/a)"),
) -> None:
    """Nodes per kind for 1M/10M/100M products at 100/1,000/10,000 queries/s, with the arithmetic shown."""
    from bench.capacity import run

    run(measure_mongo)


@app.command()
def languages() -> None:
    """How often text_tower=auto sends English and other-language queries to the multilingual tower."""
    from bench.languages import run

    run()


@app.command()
def phrasings(
    demo: str = typer.Option("data/demo", help="make demo's folder (catalog with captions, demo model)"),
) -> None:
    """Held-out shopper phrasings: the demo model (titles) vs its twin trained with shopper captions."""
    from pathlib import Path

    from bench.phrasings import run

    run(Path(demo))


@app.command()
def lifecycle(
    demo: str = typer.Option("data/demo", help="make demo's folder (catalog and model built there when absent)"),
    epochs: int = typer.Option(4, help="epochs of each training run"),
    lr: float = typer.Option(1e-4, help="learning rate of both runs"),
) -> None:
    """Shoppers' clicks vs the catalog alone: two training jobs from the demo model, held-out recall@1/5/10."""
    from pathlib import Path

    from bench.lifecycle import run

    run(Path(demo), epochs, lr)


@app.command("int8-kernels")
def int8_kernels(repeat: int = typer.Option(20, help="timed calls per row")) -> None:
    """Dynamic INT8 with signed (U8S8) vs unsigned (U8U8, export's) weights: per-row latency, cosine to FP32."""
    from bench.int8_kernels import run

    run(repeat)


@app.command("bulk-ingest")
def bulk_ingest(
    products: int = typer.Option(192, help="catalog size (one 640x480 JPEG per product)"),
    rounds: int = typer.Option(5, help="rounds, each running every run in turn; medians over them"),
    delays_ms: str = typer.Option("20,200", help="the image host's delays before each answer, ms, comma separated"),
    precisions: str = typer.Option("int8", help="precisions, comma separated (int8: the service on CPU)"),
) -> None:
    """Bulk ingest (upsert_stream, images over HTTP) vs the raw batched encoder vs the sequential upsert() loop."""
    from bench.bulk_ingest import run

    delays = tuple(float(d) for d in delays_ms.split(",") if d.strip())
    run(products, rounds, delays, tuple(p.strip() for p in precisions.split(",") if p.strip()))


@app.command()
def load(
    callers: int = typer.Option(32, help="concurrent callers"),
    seconds: float = typer.Option(60, help="how long"),
    products: int = typer.Option(1000, help="catalog size"),
) -> None:
    """Soak: concurrent callers for a fixed time; errors, wrong answers, memory, cache and queue bounds."""
    from bench.load import run

    run(n=products, callers=callers, seconds=seconds)


@app.command()
def triton(seconds: float = typer.Option(8.0, help="seconds per row")) -> None:
    """In-process vs Triton (tensors / bytes), INT8 per-row on both, at 1, 8 and 32 callers; bytes per image."""
    from bench.triton import run

    run(seconds=seconds)


@app.command()
def http(
    seconds: float = typer.Option(60, help="seconds per mixed-workload row"),
    products: int = typer.Option(10_000, help="catalog size"),
    clients: str = typer.Option("32,64", help="concurrent clients of the mixed rows, comma separated"),
    single: int = typer.Option(200, help="requests per single-client row"),
    systems: str = typer.Option(
        "ours,ours-nocache,ours-fp32,fp32,int8",
        help="which to run: ours (as shipped), ours-nocache, ours-fp32 (cache and batching off), fp32, int8 (peer)",
    ),
) -> None:
    """Our HTTP service (and variants) vs a seed-style FastAPI peer (eager CLIP FP32 / INT8 + FAISS + dict)."""
    from bench.http_load import SYSTEMS, run

    chosen = tuple(s.strip() for s in systems.split(","))
    if not chosen or set(chosen) - set(SYSTEMS):
        raise typer.BadParameter(f"systems: choose from {', '.join(SYSTEMS)}", param_hint="--systems")
    run(seconds, products, tuple(int(c) for c in clients.split(",")), single, chosen)


@app.command("demo-queries")
def demo_queries(demo: str = typer.Option("data/demo", help="the folder make demo filled")) -> None:
    """Precision@10 of text queries such as 'blue striped t-shirt' on the demo model and catalog."""
    from pathlib import Path

    from bench.demo_queries import run

    run(Path(demo))


@app.command()
def recommend(
    products: int = typer.Option(10_000, help="catalog size"),
    buyers: int = typer.Option(200, help="histories: timed requests per row"),
    events: int = typer.Option(50, help="events per history"),
) -> None:
    """Recommendations: buyer encoding + retrieval p50/p99 over HTTP and in-process, beside a numpy baseline."""
    from bench.recommend import run

    run(products, buyers, events)


@app.command("recommend-eval")
def recommend_eval(
    demo: str = typer.Option("data/demo", help="the folder make demo filled"),
    shoppers: int = typer.Option(5000, help="simulated shoppers"),
    seed: int = typer.Option(1, help="seed of the shoppers"),
    sweep: bool = typer.Option(False, help="also other half-lives and event weightings"),
) -> None:
    """Offline recall@10 / NDCG@10 of the buyer vector (and variants), popularity and random, simulated shoppers."""
    from pathlib import Path

    from bench.recommend_eval import run

    run(Path(demo), shoppers, seed, sweep)


@app.command("recommend-tower")
def recommend_tower(
    demo: str = typer.Option("data/demo", help="the folder make demo filled"),
    train_shoppers: int = typer.Option(20_000, help="simulated shoppers to train on (another seed)"),
    shoppers: int = typer.Option(5000, help="simulated shoppers to evaluate on (the recommend-eval seed)"),
    epochs: int = typer.Option(8, help="training epochs (the best on held-out shoppers is kept)"),
) -> None:
    """A learned buyer tower (attention, InfoNCE, ONNX) vs the weighted mean, on the recommend-eval protocol."""
    from pathlib import Path

    from bench.recommend_tower import run

    run(Path(demo), train_shoppers, shoppers, epochs)


@app.command()
def report(
    only: str = typer.Option("", help="run only these commands, comma separated (the other tables: from earlier runs)"),
    http_seconds: float = typer.Option(60, help="seconds per mixed row of the http section"),
    stitch: bool = typer.Option(False, help="run nothing: stitch the tables saved in bench/results/"),
) -> None:
    """Every benchmark in one run, stitched into bench/results/REPORT.md (what `make bench` runs)."""
    from bench.report import SECTIONS, run

    chosen = tuple(c.strip() for c in only.split(",") if c.strip())
    if set(chosen) - {c for c, _ in SECTIONS}:
        raise typer.BadParameter(f"only: choose from {', '.join(c for c, _ in SECTIONS)}", param_hint="--only")
    run(chosen, {"http": ["--seconds", f"{http_seconds:g}"]} if http_seconds != 60 else None, stitch=stitch)


if __name__ == "__main__":
    app()
