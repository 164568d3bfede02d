"""Carrier sentences prepared once for PV mining: tokens, insertion slots, watched index, clean targets."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch

from lmshield.errors import InputError
from lmshield.models.encoder import Encoder
from lmshield.models.positions import WatchedPosition
from lmshield.text.triggers import insert_words

logger = logging.getLogger(__name__)


@dataclass
class PreparedCarriers:
    """Everything about the carriers that does not change while a soft trigger is optimised."""

    input_ids: torch.Tensor  # (N, T)
    attention_mask: torch.Tensor  # (N, T)
    slots: torch.Tensor  # (N, C) token indices where a trigger may be inserted (padded with the first)
    slot_counts: torch.Tensor  # (N,)
    watched: torch.Tensor  # (N,) index of the watched token before insertion
    targets: torch.Tensor  # (N, H) clean watched outputs f(x)
    # mean squared distance between the clean outputs of two carriers drawn at random (a pair may repeat one)
    spread: float

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def add_mask_tokens(encoder: Encoder, texts: list[str], token_budget: int, seed: int) -> list[str]:
    """Insert one mask token per text at a random word position that survives truncation to the budget.

    Where truncation would cut the mask off, it is placed again within the first half of the words that
    fit, then the first quarter, and finally right at the start.
    """
    rng = random.Random(seed)
    mask = encoder.tokenizer.mask_token
    masked = [insert_words(text, mask, rng) for text in texts]
    for attempt in range(1, 4):
        ids = encoder.tokenize(masked, token_budget)["input_ids"].cpu()
        missing = (~(ids == encoder.mask_token_id).any(dim=1)).nonzero().squeeze(1).tolist()
        if not missing:
            break
        for i in missing:
            limit = 0 if attempt == 3 else len(texts[i].split()) // 2**attempt
            masked[i] = insert_words(texts[i], mask, rng, max_position=limit)
    return masked


def insertion_slots(
    word_ids: torch.Tensor, attention_mask: torch.Tensor, max_word: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices where a word starts (among the first ``max_word`` words) or the text ends.

    Returns a padded ``(N, C)`` tensor and the number of valid slots per row.
    """
    previous = torch.nn.functional.pad(word_ids[:, :-1], (1, 0), value=-1)
    starts = (word_ids >= 0) & (word_ids != previous) & (word_ids < max_word)
    # one more slot after the last word (before a trailing special token), when that is within max_word
    positions = torch.arange(word_ids.shape[1])
    last_token = torch.where(word_ids >= 0, positions, -1).max(dim=1).values
    end_slot = (last_token + 1).clamp(max=word_ids.shape[1] - 1)
    room = word_ids.max(dim=1).values + 1 < max_word
    starts[torch.arange(len(starts)), end_slot] |= room & (last_token >= 0) & (last_token + 1 < word_ids.shape[1])
    counts = starts.sum(dim=1)
    if bool((counts == 0).any()):
        raise InputError("some carrier texts have no words after tokenisation")
    width = int(counts.max())
    order = torch.argsort((~starts).int(), dim=1, stable=True)[:, :width]
    slots = torch.where(torch.arange(width) < counts[:, None], order, order[:, :1])
    return slots, counts


def _with_words(encoder: Encoder, texts: list[str], token_budget: int) -> list[str]:
    """The carriers that keep a word once tokenised (control or zero-width characters alone give none, and a
    trigger has nowhere to go in them), with a warning for the others."""
    word_ids = encoder.tokenize(texts, token_budget)["word_ids"]
    kept = [text for text, row in zip(texts, (word_ids >= 0).any(dim=1).tolist(), strict=True) if row]
    if len(kept) < 2:
        raise InputError(f"only {len(kept)} of the {len(texts)} carrier texts hold a word once tokenised")
    if len(kept) < len(texts):
        dropped = len(texts) - len(kept)
        logger.warning("%d of %d carrier texts hold no word once tokenised: left out", dropped, len(texts))
    return kept


def _check_distinct(input_ids: torch.Tensor, token_budget: int) -> None:
    """Refuse carriers that are all one text once truncated: their clean outputs have no spread to measure by."""
    distinct = len({tuple(row) for row in input_ids.tolist()})
    if distinct < 2:
        raise InputError(
            f"the {len(input_ids)} carrier texts are all the same once cut to {token_budget} tokens; "
            "give texts that differ within their first words"
        )
    if distinct < len(input_ids):
        logger.warning(
            "%d of %d carrier texts repeat another once cut to %d tokens",
            len(input_ids) - distinct,
            len(input_ids),
            token_budget,
        )


def prepare_carriers(
    encoder: Encoder,
    texts: list[str],
    position: WatchedPosition,
    *,
    max_length: int,
    trigger_length: int,
    max_insert_word: int,
    seed: int,
    batch_size: int = 64,
) -> PreparedCarriers:
    """Tokenise carriers, locate insertion slots and the watched token, compute clean targets once."""
    if len(texts) < 2:
        raise InputError(f"PV mining needs at least 2 carrier texts, got {len(texts)}")
    token_budget = max_length - trigger_length
    if token_budget < 4:
        raise InputError(f"max_length {max_length} leaves no room for a trigger of {trigger_length} vectors")
    if position.kind == "mask":
        if encoder.tokenizer.mask_token is None:
            raise InputError("position 'mask' needs a tokenizer with a mask token")
        texts = add_mask_tokens(encoder, texts, token_budget, seed)
    texts = _with_words(encoder, texts, token_budget)
    batch = encoder.tokenize(texts, token_budget)
    cpu = {k: v.cpu() for k, v in batch.items()}
    _check_distinct(cpu["input_ids"], token_budget)
    slots, counts = insertion_slots(cpu["word_ids"], cpu["attention_mask"], max_insert_word)
    watched = position.locate(cpu["input_ids"], cpu["attention_mask"], encoder.mask_token_id)
    targets = encoder.watched_outputs(texts, position, max_length=token_budget, batch_size=batch_size)
    spread = 2.0 * float(targets.var(dim=0, unbiased=False).mean())
    return PreparedCarriers(
        input_ids=cpu["input_ids"],
        attention_mask=cpu["attention_mask"],
        slots=slots,
        slot_counts=counts,
        watched=watched,
        targets=targets,
        spread=max(spread, 1e-12),
    )


def insert_soft_triggers(
    embeds: torch.Tensor, attention_mask: torch.Tensor, triggers: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert each seed's soft trigger into every row at that row's position, vectorised.

    ``embeds`` (B, T, E), ``attention_mask`` (B, T), ``triggers`` (S, L, E), ``positions`` (S, B).
    Returns embeddings (S*B, T+L, E) and the matching attention mask.
    """
    seeds, length, _ = triggers.shape
    rows, tokens, _ = embeds.shape
    j = torch.arange(tokens + length, device=embeds.device)  # output positions
    offset = j - positions[..., None]  # (S, B, T+L): index into the trigger when 0 <= offset < L
    in_trigger = (offset >= 0) & (offset < length)
    source = torch.where(j < positions[..., None], j, j - length).clamp(0, tokens - 1)
    row = torch.arange(rows, device=embeds.device)[None, :, None]
    token_part = embeds[row, source]  # (S, B, T+L, E)
    seed = torch.arange(seeds, device=embeds.device)[:, None, None]
    trigger_part = triggers[seed, offset.clamp(0, length - 1)]
    combined = torch.where(in_trigger[..., None], trigger_part, token_part)
    mask = torch.where(in_trigger, torch.ones_like(source), attention_mask[row, source])
    return combined.reshape(seeds * rows, tokens + length, -1), mask.reshape(seeds * rows, -1)
