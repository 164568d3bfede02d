"""Train a small GPT-2 on movie-review text, for ONION where no pretrained causal LM can be downloaded.

    .venv/bin/python benchmarks/make_onion_lm.py                    # ~10 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_psim.py --preset fast --baselines --onion-lm benchmarks/.cache/onion-lm

ONION (Qi et al. 2021) scores each word by how much deleting it lowers a language model's perplexity; the
paper uses the pretrained GPT-2, which cannot be fetched offline here. This script trains a stand-in from
scratch on the training texts of IMDB and SST-2 in ../shared/data (never a test set): a byte-level BPE
tokenizer and a 4-layer GPT-2 (hidden 256), written as safetensors to benchmarks/.cache/onion-lm. It knows
far less English than GPT-2, so ONION rows made with it are a lower bound on the paper's ONION.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
END = "<|endoftext|>"


def training_texts(data: Path) -> list[str]:
    """IMDB and SST-2 training texts (IMDB's ``<br />`` line breaks as spaces)."""
    texts = []
    for name in ("imdb", "sst-2"):
        with (data / name / "train.json").open(encoding="utf-8") as handle:
            texts += [json.loads(line)["sentence"].replace("<br />", " ") for line in handle if line.strip()]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[END])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=END, eos_token=END, unk_token=END, pad_token=END)


def token_blocks(texts: list[str], tokenizer, block: int):
    """All texts, each closed by the end token, cut into blocks of ``block`` tokens."""
    import torch

    ids: list[int] = []
    for encoded in tokenizer(texts)["input_ids"]:
        ids += [tokenizer.eos_token_id, *encoded]
    count = len(ids) // block
    return torch.tensor(ids[: count * block]).view(count, block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / ".cache" / "onion-lm")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    texts = training_texts(args.data)
    tokenizer = train_tokenizer(texts, args.vocab_size)
    random.Random(args.seed).shuffle(texts)
    held_out = max(1, len(texts) // 50)
    train, dev = token_blocks(texts[held_out:], tokenizer, 128), token_blocks(texts[:held_out], tokenizer, 128)
    end = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=256, n_layer=4, n_head=4, bos_token_id=end, eos_token_id=end
    )
    model = GPT2LMHeadModel(config)
    steps = args.epochs * math.ceil(len(train) / 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    print(f"{len(texts)} texts, {train.numel()} training tokens, {steps} steps")
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch in train[torch.randperm(len(train))].split(32):
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            dev_loss = sum(model(input_ids=b, labels=b).loss.item() * len(b) for b in dev.split(64)) / len(dev)
        print(f"epoch {epoch}: held-out perplexity {math.exp(dev_loss):.1f} ({time.perf_counter() - started:.0f} s)")
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    print(f"saved to {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
