"""Shared fixtures: a tiny seeded CLIP saved to disk and exported through the real CLI, once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# No model hub, ever: any accidental hub call fails instead of hanging on a closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pipeline ARGS`` as a user would; returns the completed process."""
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.export.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0)


@pytest.fixture(scope="session")
def model_repository(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "model_repository"
    run_cli("export", "--model", str(tiny_checkpoint), "--out", str(out))
    return out


@pytest.fixture(scope="session")
def reference(tiny_checkpoint: Path):
    """transformers' own CLIPModel, tokenizer and image processor for the tiny checkpoint."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(tiny_checkpoint).eval()
    return (
        model,
        CLIPTokenizer.from_pretrained(tiny_checkpoint),
        CLIPImageProcessorPil.from_pretrained(tiny_checkpoint),
    )
