"""The quantization notebook runs top to bottom on the tiny model; a failing cell fails the test."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "model_quantization.ipynb"


def test_notebook_is_saved_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])


def test_notebook_runs_top_to_bottom(tmp_path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = f'MODEL = "tiny"\nCALIBRATION = None\nOUT = {str(tmp_path / "out")!r}\nN_PAIRS = 48\nREPEAT = 2\n'
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as exc:  # the failing cell's traceback is the useful message
        pytest.fail(f"notebook cell failed:\n{exc}")
    text = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        for o in c.get("outputs", [])
    )
    for variant in ("fp32", "fp16", "int8", "int8-static"):
        assert variant in text
    assert "CPU: serve" in text and "GPU: serve fp16" in text
    assert (tmp_path / "out" / "quantization.png").stat().st_size > 10_000
