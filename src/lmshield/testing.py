"""Tiny offline models for tests, examples and smoke runs: random configs, tokenizers trained on the fly.

Everything here runs in seconds on a CPU with no network. ``train_input_dependent`` gives a tiny random
encoder outputs that depend on the input (a random model maps every input to nearly the same vector),
so that clean and backdoored behaviour can be told apart.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

from lmshield.attacks.vectors import DEFAULT_TRIGGERS
from lmshield.models.encoder import Encoder
from lmshield.text.grammar import grammar_sentences

TINY_ARCHITECTURES = ("bert", "roberta", "albert", "deberta-v2", "distilbert", "electra", "xlnet")

_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
_ROBERTA_SPECIALS = {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}


def tiny_corpus(count: int = 400, seed: int = 0) -> list[str]:
    """Grammar sentences plus the default trigger words, so tokenizers know every word."""
    return [*grammar_sentences(count, seed), " ".join(DEFAULT_TRIGGERS)]


def tiny_tokenizer(
    model_type: str = "bert", corpus: list[str] | None = None, vocab_size: int = 400
) -> PreTrainedTokenizerFast:
    """A word-piece (or byte-level BPE for RoBERTa) tokenizer trained on ``corpus`` in milliseconds."""
    corpus = corpus or tiny_corpus()
    specials = _ROBERTA_SPECIALS if model_type == "roberta" else _SPECIALS
    names = list(specials.values())
    if model_type == "roberta":
        tok = Tokenizer(models.BPE(unk_token=specials["unk"]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=names,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        tok = Tokenizer(models.WordPiece(_wordpiece_vocab(corpus, names), unk_token=specials["unk"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = None
    if trainer is not None:
        tok.train_from_iterator(corpus, trainer)
    cls, sep = specials["cls"], specials["sep"]
    ids = [(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))]
    single = f"$A {sep} {cls}" if model_type == "xlnet" else f"{cls} $A {sep}"
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=ids)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **{f"{k}_token": v for k, v in specials.items()},
        model_max_length=512,
    )


def _wordpiece_vocab(corpus: list[str], specials: list[str]) -> dict[str, int]:
    """Whole words of the corpus plus single characters, in a fixed order (the trainer's is not)."""
    splitter = pre_tokenizers.BertPreTokenizer()
    words = sorted({piece for text in corpus for piece, _ in splitter.pre_tokenize_str(text.lower())})
    chars = sorted({c for word in words for c in word})
    tokens = [*specials, *chars, *(f"##{c}" for c in chars), *(w for w in words if len(w) > 1)]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def tiny_config(model_type: str, vocab_size: int, hidden: int = 32):  # noqa: ANN201 - any PretrainedConfig
    """A 2-layer config of ``model_type`` with the given hidden size (ALBERT: embedding 16)."""
    common = {"vocab_size": vocab_size, "pad_token_id": 0}
    if model_type == "distilbert":
        return AutoConfig.for_model("distilbert", dim=hidden, n_layers=2, n_heads=2, hidden_dim=2 * hidden, **common)
    if model_type == "xlnet":
        return AutoConfig.for_model("xlnet", d_model=hidden, n_layer=2, n_head=2, d_inner=2 * hidden, **common)
    extra = {"embedding_size": 16} if model_type in ("albert", "electra") else {}
    if model_type == "deberta-v2":
        extra = {"relative_attention": True, "position_buckets": 16, "pos_att_type": ["p2c", "c2p"]}
    return AutoConfig.for_model(
        model_type,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        **extra,
        **common,
    )


def tiny_encoder(model_type: str = "bert", hidden: int = 32, seed: int = 0) -> Encoder:
    """A randomly initialised 2-layer encoder with a tokenizer trained on grammar text."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(model_type)
    tokenizer.padding_side = "right"
    model = AutoModel.from_config(tiny_config(model_type, len(tokenizer), hidden))
    return Encoder(model=model.eval().requires_grad_(False), tokenizer=tokenizer, source=f"tiny-{model_type}")


def save_tiny(encoder: Encoder, directory: str | Path) -> Path:
    """Save a tiny encoder as a model directory (safetensors + tokenizer)."""
    encoder.save_pretrained(directory)
    return Path(directory)


def train_input_dependent(encoder: Encoder, steps: int = 200, seed: int = 0, lr: float = 3e-3) -> Encoder:
    """Give a tiny encoder input-dependent outputs: regress [CLS] onto a random bag-of-words embedding.

    This stands in for pretraining: afterwards different sentences map to clearly different outputs,
    while the architecture and tokenizer stay untouched.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = encoder.hidden_size
    word_vectors = torch.randn(len(encoder.tokenizer), hidden, generator=gen)
    texts = tiny_corpus(600, seed + 1)
    rng = random.Random(seed)
    model = encoder.model.train().requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        batch = encoder.tokenize(rng.sample(texts, 32), 48)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        special = torch.tensor(encoder.tokenizer.all_special_ids)
        keep = (mask.bool() & ~torch.isin(ids, special)).float()
        target = torch.tanh((word_vectors[ids] * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1))
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        index = encoder.default_position().locate(ids, mask)
        loss = (out[torch.arange(len(ids)), index] - 2 * target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().requires_grad_(False)
    return encoder
