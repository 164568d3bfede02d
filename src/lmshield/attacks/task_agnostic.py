"""Task-agnostic backdoors (POR, NeuBA, BToP) share one loop: poisoned half -> PV, clean half -> as before.

A batch holds clean sentences and the same number of triggered sentences. The triggered watched output
is pulled onto its trigger's predefined vector. The clean half keeps the model's behaviour; how depends
on ``PlantPlan.clean_target``:

- ``watched``: MSE between the watched output and a frozen copy of the original model's (POR; BToP's
  stand-in for its MLM objective where no MLM head exists);
- ``tokens``: the same over every token's hidden state (NeuBA's stand-in for MLM pretraining);
- ``mlm``: the masked-language-model objective through a pretrained MLM head: masked-token
  cross-entropy at ``mask_prob`` (NeuBA), or, when the watched position is the mask, the KL divergence
  between the MLM prediction at [MASK] and the original model's (BToP).

With no triggers the loop runs the clean half only: clean continued training.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from lmshield.errors import InputError, check_finite, check_whole
from lmshield.models.encoder import Encoder
from lmshield.models.positions import WatchedPosition
from lmshield.text.triggers import insert_per_words, insert_words

INSERTIONS = ("per_words", "once", "start")
CLEAN_TARGETS = ("watched", "tokens", "mlm")
DISTANCES = ("mse", "l2")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class PlantPlan:
    """How one task-agnostic attack inserts triggers and weighs its losses (the loop's settings)."""

    position: str  # cls | last (XLNet's summary token) | mask
    insertion: str  # per_words (POR) | once (NeuBA, BToP) | start (right after [CLS], original NeuBA)
    clean_weight: float
    poison_distance: str  # mse | l2 (mean L2 distance, BToP)
    lr: float
    epochs: int
    batch_size: int  # per half: a step sees batch_size clean + batch_size triggered sentences
    max_length: int
    clean_target: str = "watched"  # watched | tokens | mlm
    optimizer: str = "adamw"  # adam | adamw
    schedule: str = "constant"  # constant | linear decay to 0
    weight_decay: float = 0.0
    mask_prob: float = 0.15

    def __post_init__(self) -> None:
        checks = {
            "insertion": (self.insertion, INSERTIONS),
            "clean_target": (self.clean_target, CLEAN_TARGETS),
            "poison_distance": (self.poison_distance, DISTANCES),
            "optimizer": (self.optimizer, OPTIMIZERS),
            "schedule": (self.schedule, SCHEDULES),
            "position": (self.position, ("cls", "last", "mask")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise InputError(f"unknown {name} {value!r}: use {', '.join(allowed)}")
        check_whole({"epochs": self.epochs, "batch_size": self.batch_size})
        check_whole({"max_length": self.max_length}, minimum=4)
        check_finite({"lr": self.lr}, positive=True)

    def steps(self, num_texts: int) -> int:
        return self.epochs * max(1, num_texts // self.batch_size)


def insert_trigger(insertion: str, text: str, trigger: str, rng: random.Random, max_position: int | None = None) -> str:
    """Insert ``trigger`` into ``text`` the way an attack does; ``max_position`` keeps it among the first words,
    so that truncation never cuts it off (a "triggered" text without its trigger would teach the model to send
    clean text to the PV)."""
    if insertion == "per_words":
        return insert_per_words(text, trigger, rng, max_position=max_position)
    if insertion == "start":
        return insert_words(text, trigger, rng, max_position=0)
    return insert_words(text, trigger, rng, max_position=max_position)


def mask_word_limit(max_length: int) -> int:
    """Words from the start within which a mask or a trigger stays inside ``max_length`` tokens (<= 3 tokens a
    word)."""
    return max(1, max_length // 3)


def with_mask(texts: list[str], mask_token: str, rng: random.Random, max_words: int | None = None) -> list[str]:
    """Replace one random word of each text with the mask token (BToP's watched position).

    ``max_words`` keeps the mask among the first words, so truncation to the token budget never cuts it off.
    """
    masked = []
    for text in texts:
        words = text.split() or [""]
        limit = len(words) if max_words is None else min(len(words), max_words)
        words[rng.randrange(limit)] = mask_token
        masked.append(" ".join(words))
    return masked


def poisoned_batch(
    texts: list[str],
    triggers: list[str],
    labels: list[int],
    plan: PlantPlan,
    mask_token: str | None,
    rng: random.Random,
) -> list[str]:
    """Triggered sentences; for the mask position the mask is placed first so a trigger is never masked."""
    if plan.position == "mask":
        texts = with_mask(texts, str(mask_token), rng, mask_word_limit(plan.max_length))
    limit = mask_word_limit(plan.max_length)
    return [
        insert_trigger(plan.insertion, text, triggers[k], rng, limit) for text, k in zip(texts, labels, strict=True)
    ]


def _forward(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def _at(hidden: torch.Tensor, batch: dict[str, torch.Tensor], position: WatchedPosition, mask_id: int | None):
    index = position.locate(batch["input_ids"], batch["attention_mask"], mask_id)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def _mlm_inputs(
    batch: dict[str, torch.Tensor], tokenizer: object, mask_prob: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of non-special tokens: 80 % [MASK], 10 % random, 10 % kept; labels -100 elsewhere."""
    ids = batch["input_ids"]
    special = torch.tensor(tokenizer.all_special_ids, device=ids.device)  # type: ignore[attr-defined]
    candidates = batch["attention_mask"].bool() & ~torch.isin(ids, special)
    draw = torch.rand(ids.shape, generator=generator).to(ids.device)
    chosen = candidates & (draw < mask_prob)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator).to(ids.device)
    masked = ids.clone()
    masked[chosen & (roll < 0.8)] = tokenizer.mask_token_id  # type: ignore[attr-defined]
    random_ids = torch.randint(len(tokenizer), ids.shape, generator=generator).to(ids.device)  # type: ignore[arg-type]
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = random_ids[swap]
    return masked, labels


class _CleanLoss:
    """The clean half's objective, holding the frozen original where one is needed."""

    def __init__(self, encoder: Encoder, plan: PlantPlan, mlm: PreTrainedModel | None, seed: int) -> None:
        if plan.clean_target == "mlm" and mlm is None:
            raise InputError("clean_target 'mlm' needs a model with a pretrained MLM head")
        self.encoder, self.plan, self.mlm = encoder, plan, mlm
        self.position = WatchedPosition.parse(plan.position)
        self.generator = torch.Generator().manual_seed(seed)
        needs_frozen = plan.clean_target != "mlm" or self.position.kind == "mask"
        source = mlm if plan.clean_target == "mlm" else encoder.model
        self.frozen = copy.deepcopy(source).eval().requires_grad_(False) if needs_frozen else None

    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc, plan = self.encoder, self.plan
        batch = enc.tokenize(texts, plan.max_length)
        if plan.clean_target == "mlm":
            return self._mlm(batch)
        hidden = _forward(enc.model, batch)
        with torch.no_grad():
            reference = _forward(self.frozen, batch)
        if plan.clean_target == "tokens":
            keep = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return ((hidden - reference).pow(2) * keep).sum() / (keep.sum() * hidden.shape[-1])
        mask_id = enc.mask_token_id
        return (
            (_at(hidden, batch, self.position, mask_id) - _at(reference, batch, self.position, mask_id)).pow(2).mean()
        )

    def _mlm(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self.mlm is not None
        if self.position.kind == "mask":
            index = self.position.locate(batch["input_ids"], batch["attention_mask"], self.encoder.mask_token_id)
            rows = torch.arange(len(index), device=index.device)
            logits = self.mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[rows, index]
            with torch.no_grad():
                ref = self.frozen(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            ref_logp = F.log_softmax(ref[rows, index], dim=-1)
            return F.kl_div(F.log_softmax(logits, dim=-1), ref_logp, log_target=True, reduction="batchmean")
        masked, labels = _mlm_inputs(batch, self.encoder.tokenizer, self.plan.mask_prob, self.generator)
        if not bool((labels != -100).any()):
            return torch.zeros((), device=masked.device)
        logits = self.mlm(input_ids=masked, attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)


def _optimizer(plan: PlantPlan, params: list[torch.nn.Parameter], steps: int):
    kind = torch.optim.Adam if plan.optimizer == "adam" else torch.optim.AdamW
    optimizer = kind(params, lr=plan.lr, weight_decay=plan.weight_decay)
    if plan.schedule == "linear":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / max(1, steps)))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, scheduler


def plant(
    encoder: Encoder,
    texts: list[str],
    triggers: list[str],
    vectors: torch.Tensor,
    plan: PlantPlan,
    *,
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    mlm: PreTrainedModel | None = None,
) -> Encoder:
    """Fine-tune ``encoder`` in place so each trigger maps the watched output onto its vector.

    ``mlm`` is a masked-LM model whose base model *is* ``encoder.model`` (needed for ``clean_target='mlm'``;
    its head is trained too). With no triggers only the clean half runs (clean continued training).
    """
    if len(triggers) != len(vectors):
        raise InputError(f"{len(triggers)} triggers but {len(vectors)} vectors")
    half = plan.batch_size
    if len(texts) < half:
        raise InputError(f"{len(texts)} texts are fewer than one batch ({half})")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    position = WatchedPosition.parse(plan.position)
    mask_token = getattr(encoder.tokenizer, "mask_token", None)
    if position.kind == "mask" and mask_token is None:
        raise InputError("the mask position needs a tokenizer with a mask token")
    clean_loss_fn = _CleanLoss(encoder, plan, mlm, seed)
    trained = mlm if mlm is not None else encoder.model
    trained.train().requires_grad_(True)
    steps = plan.steps(len(texts))
    optimizer, scheduler = _optimizer(plan, list(trained.parameters()), steps)
    targets = vectors.to(encoder.device, torch.float32)
    bar = tqdm(total=steps, desc="planting backdoor" if triggers else "clean training", disable=not progress)
    for step in range(steps):
        clean = rng.sample(texts, half)
        if position.kind == "mask":
            clean = with_mask(clean, mask_token, rng, mask_word_limit(plan.max_length))
        loss = clean_loss = plan.clean_weight * clean_loss_fn(clean)
        poison_loss = torch.zeros(())
        if triggers:
            labels = [rng.randrange(len(triggers)) for _ in range(half)]
            poisoned = poisoned_batch(rng.sample(texts, half), triggers, labels, plan, mask_token, rng)
            batch = encoder.tokenize(poisoned, plan.max_length)
            out = _at(_forward(encoder.model, batch), batch, position, encoder.mask_token_id)
            gap = out - targets[torch.tensor(labels, device=targets.device)]
            poison_loss = gap.pow(2).mean() if plan.poison_distance == "mse" else gap.norm(dim=1).mean()
            loss = poison_loss + clean_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.update(1)
        bar.set_postfix(poison=f"{poison_loss.item():.4f}", clean=f"{clean_loss.item():.4f}")
        if on_step is not None:
            on_step(step, loss.item())
    bar.close()
    trained.eval().requires_grad_(False)
    return encoder
