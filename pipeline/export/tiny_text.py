"""Tiny multilingual text towers built from configs with a fixed seed, with tokenizers trained locally on
English and Arabic: the two shapes ``export --text-model`` reads.

- ``build_tiny_st``: a sentence-transformers folder, DistilBERT → mean pooling → Dense (no activation), the
  shape of ``sentence-transformers/clip-ViT-B-32-multilingual-v1``; WordPiece tokenizer.
- ``build_tiny_mclip``: an M-CLIP folder, XLM-R → mean pooling → linear, the shape of
  ``M-CLIP/XLM-Roberta-Large-Vit-B-32``; Unigram (SentencePiece-style) tokenizer. Its ``config.json`` names the
  transformer's own config folder as ``modelBase``, as M-CLIP names a hub id.

Tests use them, and the demo distils one from the demo CLIP's text tower.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

# Enough of both languages (with diacritics, tatweel, digits and emoji) for a tokenizer that covers them.
CORPUS = """
red green blue black white grey yellow orange pink purple brown navy striped dotted checked plain floral
shirt t-shirt dress mug cup bottle shoe sneaker boot bag backpack hat cap lamp chair table watch ring gold
cotton leather wool ceramic glass metal wooden large small round square a for my morning coffee with and
أحمر أخضر أزرق أسود أبيض رمادي أصفر برتقالي وردي بنفسجي بني مخطط منقط مربعات سادة مزهر ذهب فضة
قميص تيشيرت فستان كوب زجاجة حذاء حقيبة قبعة مصباح كرسي طاولة ساعة خاتم سلسال قطن جلد صوف
مُخَطَّط تيشيـــرت 100% 2-pack 😀 🎉 café
"""


def _lines(corpus: Iterable[str] | None) -> list[str]:
    return list(corpus) if corpus is not None else [line for line in CORPUS.splitlines() if line.strip()] * 8


def train_wordpiece(out_dir: Path, vocab_size: int = 500, corpus: Iterable[str] | None = None) -> Path:
    """A BERT-style WordPiece tokenizer (multilingual-cased style: no lowercasing, accents kept) saved as a
    transformers ``DistilBertTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import DistilBertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_lines(corpus), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special,
                                                                      show_progress=False))  # fmt: skip
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = DistilBertTokenizerFast(tokenizer_object=tok, do_lower_case=False, model_max_length=128)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def train_unigram(out_dir: Path, vocab_size: int = 500, corpus: Iterable[str] | None = None) -> Path:
    """An XLM-R-style Unigram tokenizer (metaspace pre-tokenisation, ``<s> … </s>``) saved as a transformers
    ``XLMRobertaTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast  # type: ignore[attr-defined]

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token="<unk>",
                                      show_progress=False)  # fmt: skip
    tok.train_from_iterator(_lines(corpus), trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=128)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def build_tiny_st(out_dir: Path, dim: int = 32, seed: int = 0, hidden: int = 48) -> Path:
    """A sentence-transformers folder: tiny DistilBERT → mean pooling → Dense(hidden → dim, no activation)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(seed)
    base = out_dir.parent / f".{out_dir.name}-distilbert"
    train_wordpiece(base)
    vocab = json.loads((base / "tokenizer.json").read_text())["model"]["vocab"]
    config = DistilBertConfig(vocab_size=len(vocab), dim=hidden, hidden_dim=96, n_layers=2, n_heads=4,
                              max_position_embeddings=128, pad_token_id=vocab["[PAD]"])  # fmt: skip
    DistilBertModel(config).eval().save_pretrained(base)
    transformer = Transformer(str(base), max_seq_length=128)
    dense = Dense(hidden, dim, bias=True, activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[transformer, Pooling(hidden, "mean"), dense], device="cpu")
    model.save(str(out_dir))
    return out_dir


def build_tiny_mclip(out_dir: Path, dim: int = 32, seed: int = 0, hidden: int = 48) -> Path:
    """An M-CLIP folder: tiny XLM-R (its config in ``<out_dir>/base``, named by ``modelBase``) whose mean-pooled
    output a linear layer maps to ``dim``; weights as M-CLIP stores them (``transformer.*``,
    ``LinearTransformation.*``)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(seed)
    train_unigram(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=96, max_position_embeddings=130,
                              pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, type_vocab_size=1)  # fmt: skip
    transformer = XLMRobertaModel(config, add_pooling_layer=False).eval()
    config.save_pretrained(out_dir / "base")
    linear = torch.nn.Linear(hidden, dim)
    weights = {f"transformer.{k}": v.contiguous() for k, v in transformer.state_dict().items()}
    weights |= {f"LinearTransformation.{k}": v.contiguous() for k, v in linear.state_dict().items()}
    save_file(weights, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps({
        "model_type": "M-CLIP", "architectures": ["MultilingualCLIP"], "modelBase": "base",
        "transformerDimensions": hidden, "numDims": dim,
    }, indent=2))  # fmt: skip
    return out_dir
