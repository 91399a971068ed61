"""A second text tower: a multilingual encoder distilled into CLIP's text space, so its queries search the same
image vectors (``export --text-model``).

Two checkpoint shapes are read, from a hub id or a local folder:

- **sentence-transformers** (a folder with ``modules.json``), e.g. ``clip-ViT-B-32-multilingual-v1``:
  Transformer → Pooling → Dense. The library itself loads it and runs its modules inside the graph, so the
  exported tower computes what ``SentenceTransformer.encode`` computes (then L2 normalisation).
- **M-CLIP** (``config.json`` with ``model_type: "M-CLIP"``), e.g. ``M-CLIP/XLM-Roberta-Large-Vit-B-32``: the
  transformer named by ``modelBase`` (a hub id, or a folder inside the checkpoint) → attention-masked mean
  pooling → ``LinearTransformation``, with M-CLIP's own weight names.

The graph takes ``input_ids`` / ``attention_mask`` (the same tensor contract as CLIP's text tower) and ends in
an L2 normalisation. Its tokenizer is saved as ``tokenizer_multilingual.json`` and run with the ``tokenizers``
library at serving time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ModelError
from pipeline.export.onnx_export import MAX_BATCH
from pipeline.manifest import TEXT_INPUTS, TEXT_OUTPUT, TextSpec

MULTILINGUAL_TOKENIZER = "tokenizer_multilingual.json"


@dataclass
class LoadedTower:
    module: Any  # torch module: (input_ids, attention_mask) → unit vectors [N, dim]
    tokenizer: Any  # a transformers tokenizer with a tokenizers-library backend
    text: TextSpec
    dim: int
    kind: str  # "sentence-transformers" or "m-clip"


def _text_spec(tokenizer: Any, max_length: int) -> TextSpec:
    ids = tokenizer("a")["input_ids"]  # what the post-processor puts around a text: [CLS] … [SEP], <s> … </s>
    pad = tokenizer.pad_token_id
    if pad is None or len(ids) < 3:
        raise ModelError("the text model's tokenizer adds no start/end tokens or has no pad token")
    return TextSpec(tokenizer_file="", max_length=max_length, pad_token_id=pad, bos_token_id=ids[0],
                    eos_token_id=ids[-1])  # fmt: skip


def _sentence_transformers(folder: Path) -> LoadedTower:
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        st = SentenceTransformer(str(folder), device="cpu", local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"{folder}: cannot load it with sentence-transformers ({exc})") from exc
    first = st[0]
    if not hasattr(first, "auto_model") or not hasattr(first.tokenizer, "backend_tokenizer"):
        raise ModelError(f"{folder}: its first module is not a transformers text model with a fast tokenizer")

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            out = self.st({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]
            return torch.nn.functional.normalize(out, dim=-1)

    dim = st.get_embedding_dimension() or 0
    return LoadedTower(Tower().eval(), first.tokenizer, _text_spec(first.tokenizer, int(st.max_seq_length or 512)), dim,
                       "sentence-transformers")  # fmt: skip


def _mclip(folder: Path, config: dict[str, Any]) -> LoadedTower:
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from pipeline.export.repository import resolve_source

    try:
        hidden, dim, base = int(config["transformerDimensions"]), int(config["numDims"]), str(config["modelBase"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{folder}/config.json: an M-CLIP config needs transformerDimensions, numDims, "
                         f"modelBase ({exc})") from exc  # fmt: skip
    base_folder = folder / base if (folder / base).is_dir() else resolve_source(base)
    weights = _mclip_weights(folder)
    try:
        transformer = AutoModel.from_config(AutoConfig.from_pretrained(base_folder), add_pooling_layer=False)
        missing, unexpected = transformer.load_state_dict(
            {k.removeprefix("transformer."): v for k, v in weights.items() if k.startswith("transformer.")},
            strict=False,
        )
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{folder}: cannot build the M-CLIP transformer from {base!r} ({exc})") from exc
    if [k for k in missing if "position_ids" not in k] or unexpected:
        raise ModelError(f"{folder}: the weights do not fit {base!r}: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}")  # fmt: skip
    linear = torch.nn.Linear(hidden, dim)
    linear.load_state_dict({"weight": weights["LinearTransformation.weight"],
                            "bias": weights["LinearTransformation.bias"]})  # fmt: skip

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer, self.linear = transformer.eval(), linear.eval()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            embs = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.to(embs.dtype)
            pooled = (embs * mask.unsqueeze(2)).sum(dim=1) / mask.sum(dim=1)[:, None]
            return torch.nn.functional.normalize(self.linear(pooled), dim=-1)

    positions = int(getattr(transformer.config, "max_position_embeddings", 512))
    offset = 2 if transformer.config.model_type in {"xlm-roberta", "roberta"} else 0  # positions start at pad + 1
    max_length = min(int(tokenizer.model_max_length), positions - offset)
    return LoadedTower(Tower().eval(), tokenizer, _text_spec(tokenizer, max_length), dim, "m-clip")


def _mclip_weights(folder: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        weights = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        weights = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ModelError(f"{folder}: no model.safetensors or pytorch_model.bin")
    if "LinearTransformation.weight" not in weights:
        raise ModelError(f"{folder}: no LinearTransformation weights: not an M-CLIP checkpoint")
    return dict(weights)


def load_text_tower(source: str) -> LoadedTower:
    """The text model at ``source`` (hub id or folder) as a module ending in L2 normalisation. Raises
    ModelError for anything that is not a sentence-transformers or M-CLIP text model."""
    from pipeline.export.repository import resolve_source

    folder = resolve_source(source)
    if (folder / "modules.json").is_file():
        tower = _sentence_transformers(folder)
    else:
        config_file = folder / "config.json"
        try:
            config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        except json.JSONDecodeError as exc:
            raise ModelError(f"{config_file}: not valid JSON ({exc})") from exc
        if config.get("model_type") != "M-CLIP" and "transformerDimensions" not in config:
            raise ModelError(
                f"{source}: not a multilingual text model: expected a sentence-transformers folder (modules.json) "
                f"or an M-CLIP checkpoint (model_type 'M-CLIP'); found model_type {config.get('model_type')!r}"
            )
        tower = _mclip(folder, config)
    if not hasattr(tower.tokenizer, "backend_tokenizer"):
        raise ModelError(f"{source}: its tokenizer has no tokenizers-library backend to export")
    return tower


def export_tower_onnx(tower: LoadedTower, path: Path) -> None:
    """Write ``tower`` as a single-file FP32 ONNX graph with CLIP's text tensor contract."""
    import torch

    batch = tower.tokenizer(["a red mug", "قميص"], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"].to(torch.int64), batch["attention_mask"].to(torch.int64)
    seq = torch.export.Dim("seq", min=2, max=tower.text.max_length)
    dims = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH), 1: seq}
    torch.onnx.export(
        tower.module,
        (ids, mask),
        str(path),
        dynamo=True,
        external_data=False,
        input_names=list(TEXT_INPUTS),
        output_names=[TEXT_OUTPUT],
        dynamic_shapes={TEXT_INPUTS[0]: dims, TEXT_INPUTS[1]: dims},
        verbose=False,
    )
