"""Triton python-backend model that runs an exported ONNX file with onnxruntime (the ``cpu_test`` configs).

Triton loads ``<model>/<version>/model.py``; export writes there a one-line shim importing this class, so the
server runs the project's own code from the venv. All requests of a dynamic batch run as one onnxruntime call:
texts of different lengths are right-padded to the longest (CLIP's causal mask makes padding invisible).

INT8 is the exception: dynamic quantisation scales activations over the whole input of a call (padding
included), so a vector would depend on its batch-mates. Its model (``clip_*_int8``) has no dynamic batching and a
max batch of 1, and should a call still hold several items (a format-1 repository, where INT8 is version 3 of the
batched model), each runs alone, unpadded, as the in-process encoder runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.manifest import PER_ITEM, Manifest, file_for_this_cpu
from pipeline.triton.control import SOURCE_PARAMETER
from pipeline.triton.preprocess_models import model_root


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        model_dir = Path(args["model_repository"])
        root = model_root(args)
        manifest = Manifest.model_validate(json.loads((root / "manifest.json").read_text()))
        version = int(args["model_version"])
        # A version loaded under another name (``clip_visual__v2``) records the export's own name.
        name = config.get("parameters", {}).get(SOURCE_PARAMETER, {}).get("string_value") or config["name"]
        second = manifest.multilingual  # a multilingual text tower, with its own tokenizer's pad id
        towers = [(spec, manifest.text) for spec in manifest.models.values()]
        towers += [(second.model, second.text)] if second else []
        text = manifest.text
        served = []
        for spec, spec_text in towers:
            for variant in spec.variants.values():
                if variant.triton_model == name and variant.triton_version == version:
                    served.append(variant)
                    text = spec_text
        # The file the in-process encoder would load on this CPU (INT8: the no-VNNI kernel where needed); in the
        # model's own version folder when the files came with the load request.
        file = Path(file_for_this_cpu(served[0]).file) if served else Path(name, args["model_version"], "model.onnx")
        path = root / file if root != model_dir else model_dir / args["model_version"] / file.name
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        # Padding values per input: pad id for token ids, 0 for masks; images never need padding.
        self.pad = {"input_ids": text.pad_token_id, "attention_mask": 0}
        self.per_item = any(variant.precision in PER_ITEM for variant in served)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        per_input = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.inputs
        }
        sizes = [len(a) for a in per_input[self.inputs[0]]]
        feeds = {name: _concat(arrays, self.pad.get(name, 0)) for name, arrays in per_input.items()}
        outputs = self._run_per_item(feeds) if self.per_item else self.session.run(self.outputs, feeds)
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(n, o[start : start + size]) for n, o in zip(self.outputs, outputs, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def _run_per_item(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One session call per item, each cut to its own length (the attention mask's count; right padding)."""
        rows = []
        for i in range(len(next(iter(feeds.values())))):
            item = {name: value[i : i + 1] for name, value in feeds.items()}
            if "attention_mask" in item:
                length = int(item["attention_mask"].sum())
                item = {name: value[:, :length] for name, value in item.items()}
            rows.append(self.session.run(self.outputs, item))
        return [np.concatenate([row[k] for row in rows]) for k in range(len(self.outputs))]


def _concat(arrays: list[np.ndarray], pad_value: int) -> np.ndarray:
    """Stack request arrays along the batch axis, right-padding axis 1 to the longest when lengths differ."""
    if arrays[0].ndim == 2 and len({a.shape[1] for a in arrays}) > 1:
        longest = max(a.shape[1] for a in arrays)
        arrays = [np.pad(a, ((0, 0), (0, longest - a.shape[1])), constant_values=pad_value) for a in arrays]
    return np.concatenate(arrays, axis=0)
