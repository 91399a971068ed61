"""A tiny CLIP built from a config with a fixed seed, and a BPE tokenizer trained locally.

Tests, benchmarks and the offline demo use it so that nothing is fetched from a model hub. It is saved with
``save_pretrained`` and loaded back through the same path as a real checkpoint.

The weights are identical for a given seed. The tokenizers library's BPE trainer orders merges of equal count
by hash-map iteration, so two runs can swap such merges (same vocabulary); every test compares within one
build, so nothing depends on it, but fingerprints of two separately built tiny models can differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

_WORDS = """
red green blue black white grey yellow orange pink purple brown navy beige striped dotted checked plain floral
shirt t-shirt dress mug cup bottle shoe sneaker boot bag backpack hat cap lamp chair table sofa watch ring
cotton leather wool ceramic glass metal wooden large small round square tall short soft classic modern vintage
a an the of with for and in on men women kids summer winter sport casual formal gift set pack new sale
café naïve résumé 北京 東京 مرحبا بالعالم 😀 🎉 ✓ — € $ 100% 2-pack
"""


def train_tokenizer(out_dir: Path, vocab_size: int = 600, corpus: Iterable[str] | None = None) -> Path:
    """Train a CLIP-style byte-level BPE (``</w>`` word ends) and save it as a transformers CLIPTokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    # Same normaliser and pre-tokeniser as transformers' CLIPTokenizer, so training sees what encoding sees.
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = list(corpus) if corpus is not None else [_WORDS] * 4
    tok.train_from_iterator(lines, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    # Real CLIP's vocab holds every byte with and without "</w>"; without them an unseen final byte would map
    # to the unknown token, which CLIP shares with end-of-text, and move the pooled position.
    vocab = model["vocab"]
    for symbol in pre_tokenizers.ByteLevel.alphabet():
        for piece in (symbol, symbol + "</w>"):
            vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # merges as (left, right) pairs, which the tokenizers BPE model takes; the stub says list[str]
    clip_tok = CLIPTokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    clip_tok.save_pretrained(out_dir)
    return out_dir


def tiny_clip_config(vocab_size: int, bos_id: int, eos_id: int, **overrides: Any) -> Any:
    """A CLIPConfig small enough to export and run in a second, with the real 224 px / 77 token shapes."""
    from transformers import CLIPConfig

    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    vision = dict(
        image_size=224,
        patch_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    text.update(overrides.pop("text", {}))
    vision.update(overrides.pop("vision", {}))
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=overrides.pop("projection_dim", 32))


def vit_b32_overrides() -> dict[str, Any]:
    """ViT-B/32 shapes (random weights): what the benchmarks time, since latency does not depend on weights."""
    return dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        projection_dim=512,
    )


def build_tiny_clip(out_dir: Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a seeded random CLIP, its tokenizer and an image-processor config to ``out_dir``."""
    import torch
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    train_tokenizer(out_dir)
    tok = CLIPTokenizer.from_pretrained(out_dir)
    config = tiny_clip_config(len(tok), tok.bos_token_id, tok.eos_token_id, **overrides)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(out_dir)
    CLIPImageProcessorPil().save_pretrained(out_dir)
    return out_dir
