"""Settings of downstream tuning: one frozen dataclass for every method, defaults from the papers."""

from __future__ import annotations

import dataclasses
import json
import string
from dataclasses import dataclass
from typing import Any

from lmshield.errors import InputError, check_bool, check_finite, check_share, check_whole

HEADS = ("cls", "mask")
CHECKPOINTS = ("best", "last")
DEFAULT_TEMPLATE = "{text} It was {mask} ."


MIN_LENGTH = 8  # tokens per input, special tokens included
SIZES = {  # whole-number settings and their largest sane value (a crafted tuning.json must not allocate gigabytes)
    "epochs": 100_000,
    "batch_size": 65_536,
    "eval_batch_size": 65_536,
    "encoder_hidden_size": 65_536,
    "lora_r": 4_096,
    "num_virtual_tokens": 512,
}
MAX_LORA_ALPHA = 65_536
TEMPLATE_FIELDS = ("text", "mask")


def check_template(template: str) -> None:
    """A mask-head template holds ``{text}`` and ``{mask}`` once each and no other replacement field (no index,
    attribute, conversion or format spec: ``str.format`` would run them on every input)."""
    try:
        parts = list(string.Formatter().parse(template)) if isinstance(template, str) else None
    except ValueError as exc:
        raise InputError(f"the mask template {template!r} is not a format string ({exc})") from exc
    if parts is None:
        raise InputError(f"the mask template must be text, got {template!r}")
    fields = [(name, spec, conversion) for _, name, spec, conversion in parts if name is not None]
    if sorted(name for name, _, _ in fields) != sorted(TEMPLATE_FIELDS) or any(s or c for _, s, c in fields):
        raise InputError(
            f"the mask template needs {{text}} and {{mask}} once each and nothing else in braces: {template!r}"
        )


@dataclass(frozen=True)
class TuningConfig:
    """How a classifier is tuned on top of an encoder.

    ``None`` fields take the method's defaults (see :mod:`lmshield.tuning.methods`): the PSIM release uses
    lr 2e-3 for every PEFT method and 5 virtual tokens; full fine-tuning uses lr 2e-5. LoRA: r 8, alpha 16,
    dropout 0.1 on query/value (``lora_targets=None`` picks the architecture's query/value modules).

    ``head`` is ``cls`` (a linear classifier on the first token's state, P-tuning v2 style) or ``mask``
    (the text is wrapped in ``template`` and classified from the mask token's state, P-tuning v1 style).
    ``keep_head`` starts from a checkpoint saved with a sequence-classification head and keeps that head.
    ``train_pooler``: a kept head reads the encoder's pooler (BERT, ALBERT, DeBERTa); PEFT methods leave it
    frozen with the rest of the encoder, as the reference and peft's sequence-classification task do, unless
    set (full fine-tuning trains it anyway).
    ``prompt_init`` (prompt tuning): ``vocab`` starts every virtual token from a randomly drawn word
    embedding, ``random`` from peft's N(0, 1) draw; on SST-2 over MiniLM-L6, vocab reached dev accuracy
    0.76-0.81 where random stayed at 0.73.
    ``checkpoint``: keep the epoch with the ``best`` dev accuracy, or the ``last`` one (for training on
    labels that carry no signal, as PSIM's random labels).
    ``position_jitter`` (full fine-tuning and LoRA only) trains with every input's position ids moved right
    by a random 0..N, so what is learned does not hang on absolute positions; prompt tuning, P-tuning and
    prefix tuning later move every token right by their virtual tokens.
    """

    method: str = "prefix"
    head: str = "cls"
    # prompt learning
    num_virtual_tokens: int | None = None
    encoder_hidden_size: int = 128
    prompt_init: str = "vocab"
    # LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] | None = None
    # heads
    template: str = DEFAULT_TEMPLATE
    head_dropout: float = 0.1
    keep_head: bool = False
    train_pooler: bool = False
    # optimisation
    lr: float | None = None
    epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    dev_fraction: float = 0.1
    checkpoint: str = "best"
    position_jitter: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        from lmshield.tuning.methods import PROMPT_INITS, get_method

        method = get_method(self.method)
        for name, value in method.defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.lora_targets is not None:
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        check_bool({"keep_head": self.keep_head, "train_pooler": self.train_pooler})
        if self.checkpoint not in CHECKPOINTS:
            raise InputError(f"unknown checkpoint {self.checkpoint!r}: use best or last")
        if self.prompt_init not in PROMPT_INITS:
            raise InputError(f"unknown prompt_init {self.prompt_init!r}: use {' or '.join(PROMPT_INITS)}")
        if self.head not in HEADS:
            raise InputError(f"unknown head {self.head!r}: use cls or mask")
        if self.head == "mask":
            check_template(self.template)
        for name, most in SIZES.items():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most):
                raise InputError(f"{name} must be a whole number from 1 to {most}, got {value!r}")
        check_whole({"max_length": self.max_length})
        check_whole({"position_jitter": self.position_jitter, "seed": self.seed}, minimum=0)
        if self.max_length < MIN_LENGTH:  # [CLS] and [SEP] (and a template's words) would leave no room for text
            raise InputError(f"max_length must be at least {MIN_LENGTH} tokens, got {self.max_length}")
        check_share({name: getattr(self, name) for name in ("head_dropout", "lora_dropout", "warmup_ratio")})
        if self.lora_targets is not None and not all(isinstance(t, str) and t for t in self.lora_targets):
            raise InputError(f"lora_targets must be module names, got {list(self.lora_targets)!r}")
        if self.lr is None:
            raise InputError("lr must be positive, got None")
        check_finite({"lr": self.lr, "max_grad_norm": self.max_grad_norm}, positive=True)
        check_finite({"weight_decay": self.weight_decay})
        if self.weight_decay < 0:
            raise InputError(f"weight_decay must be >= 0, got {self.weight_decay}")
        check_finite({"lora_alpha": self.lora_alpha}, positive=True)
        if self.lora_alpha > MAX_LORA_ALPHA:  # scales LoRA's update by alpha / r: a huge one overflows to NaN
            raise InputError(f"lora_alpha must be at most {MAX_LORA_ALPHA}, got {self.lora_alpha}")
        if self.position_jitter and method.uses_virtual_tokens:
            raise InputError("position_jitter works with full fine-tuning and LoRA, not with virtual tokens")
        fraction = self.dev_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:  # NaN too
            raise InputError(f"dev_fraction must be a number in (0, 1), got {fraction!r}")

    def replace(self, **changes: Any) -> TuningConfig:
        """A copy with ``changes``; on a change of ``method``, fields still at the old method's defaults
        (lr, virtual tokens) take the new method's defaults instead of carrying the old ones over."""
        from lmshield.tuning.methods import get_method

        if changes.get("method", self.method) != self.method:
            for name, value in get_method(self.method).defaults.items():
                if name not in changes and getattr(self, name) == value:
                    changes[name] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["lora_targets"] is not None:
            data["lora_targets"] = list(data["lora_targets"])
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuningConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
