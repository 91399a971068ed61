"""Torch CLIP towers → single-file FP32 ONNX graphs with the pinned tensor contract.

Each graph ends in an L2 normalisation, so every consumer gets unit vectors (cosine = dot product).
The text graph takes any sequence length from 2 (bos + eos) to ``max_length``; the batch axis is dynamic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.manifest import IMAGE_INPUT, IMAGE_OUTPUT, TEXT_INPUTS, TEXT_OUTPUT

MAX_BATCH = 4096


def _features(output: Any) -> Any:
    # transformers 5 returns an output object from get_*_features; 4.x returned the tensor itself.
    return getattr(output, "pooler_output", output)


def export_text(model: Any, path: Path, max_length: int, eos_id: int) -> None:
    """Write the text tower (projection + L2 norm) of a transformers ``CLIPModel`` to ``path``."""
    import torch

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            feats = _features(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
            return torch.nn.functional.normalize(feats, dim=-1)

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=2, max=max_length)
    ids = torch.tensor([[0, 5, 6, eos_id], [0, 7, eos_id, eos_id]], dtype=torch.int64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.int64)
    torch.onnx.export(
        TextTower().eval(),
        (ids, mask),
        str(path),
        dynamo=True,
        external_data=False,
        input_names=list(TEXT_INPUTS),
        output_names=[TEXT_OUTPUT],
        dynamic_shapes={TEXT_INPUTS[0]: {0: batch, 1: seq}, TEXT_INPUTS[1]: {0: batch, 1: seq}},
        verbose=False,
    )


def export_vision(model: Any, path: Path, image_size: int) -> None:
    """Write the vision tower (projection + L2 norm) of a transformers ``CLIPModel`` to ``path``."""
    import torch

    class VisionTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            feats = _features(self.clip.get_image_features(pixel_values=pixel_values))
            return torch.nn.functional.normalize(feats, dim=-1)

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    torch.onnx.export(
        VisionTower().eval(),
        (torch.zeros(2, 3, image_size, image_size),),
        str(path),
        dynamo=True,
        external_data=False,
        input_names=[IMAGE_INPUT],
        output_names=[IMAGE_OUTPUT],
        dynamic_shapes={IMAGE_INPUT: {0: batch}},
        verbose=False,
    )
