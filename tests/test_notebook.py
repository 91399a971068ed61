"""The quantization notebook runs top to bottom on the tiny model; a failing cell fails the test."""

from __future__ import annotations

import base64
import json
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
    assert (tmp_path / "out" / "quantization.png").stat().st_size > 10_000
    # The plots are shown in the notebook itself, not only written to a file.
    shown = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert shown and len(base64.b64decode(shown[0]["data"]["image/png"])) > 10_000

    results = json.loads((tmp_path / "out" / "quantization.json").read_text())
    # Static INT8 is calibrated on pairs the evaluation never scores (drawn titles are unique per pair).
    calibration, evaluation = results["calibration"]["titles"], results["evaluation"]["titles"]
    assert len(calibration) == len(evaluation) == 48 and not set(calibration) & set(evaluation)
    lines = text.splitlines()
    for device, latency in (("cpu", "image b1 ms"), ("gpu", "image b16 ms")):
        measured = results[device]
        said = [line for line in lines if line.startswith(f"{device.upper()}: ")]
        assert len(said) == 1, said
        if measured is None:  # no CUDA here: no recommendation made up for it
            assert device == "gpu" and said[0].startswith("GPU: not measured here")
            continue
        assert measured["latency"] == latency
        # The printed choice is the rule applied to the measured rows: the fastest variant that keeps the
        # top-10 overlap with FP32 at 0.8 or more and that the export gate did not refuse.
        rows = {r["variant"]: r for r in measured["rows"]}
        assert set(rows) == {"fp32", "fp16", "int8", "int8-static"}
        gated = results["int8_gate_servable"]
        ok = [v for v, r in rows.items() if r["top-10 overlap"] >= 0.8 and (v != "int8" or gated)]
        assert measured["choice"] == min(ok, key=lambda v: rows[v][latency])
        assert said[0].startswith(f"{device.upper()}: serve {measured['choice']} (")
        assert f"{rows[measured['choice']][latency]:.1f} ms" in said[0]
