"""Settings of the model lifecycle (``PIPELINE__MODELS__...``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from pipeline.types import Precision


class ModelsSettings(BaseModel):
    # Where versions live (a folder per version: its checkpoint and exported repository). Unset: ``models/``
    # beside the data (the parent of the Qdrant Edge folder).
    root: Path | None = None
    # A training job refuses to run on fewer pairs than this (catalog pairs and click pairs together).
    min_pairs: int = Field(default=32, ge=2)
    # One product in N (by a hash of its id), and one query in N (by a hash of its query id), is held out of
    # training and kept for validation.
    heldout_every: int = Field(default=10, ge=2)
    # The most validation queries of each kind (catalog titles, clicks) a validation runs.
    validation_queries: int = Field(default=500, ge=1)
    # A candidate whose recall@10 or MRR falls below the active model's by more than this is refused.
    max_regression: float = Field(default=0.02, ge=0, le=1)
    # Training defaults (a train job's parameters override them).
    epochs: int = Field(default=4, ge=1)
    batch_size: int = Field(default=64, ge=2)
    lr: float | None = None  # None: 1e-5 for a real checkpoint, 2e-4 for the demo's small model
    # The precisions a train job exports (FP32 is always there: the INT8 gate measures against it).
    precisions: list[Precision] = [Precision.FP32, Precision.INT8]
    # How often a service looks for an activation made by another process (a Celery worker).
    follow_s: float = Field(default=2.0, gt=0)
    # How long an activation waits for a re-index (or another switch) holding the collection before giving up.
    switch_wait_s: float = Field(default=600.0, ge=0)
    # Seconds a generation the service no longer uses stays open for requests that started on it.
    drain_s: float = Field(default=65.0, ge=0)
