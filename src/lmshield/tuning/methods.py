"""Tuning methods: one registry entry per method, so adding a method touches one place.

Each entry says how to wrap a frozen encoder with peft (or not, for full fine-tuning), which defaults the
papers use, and how many virtual tokens the method prepends to the input sequence: prompt tuning and
P-tuning prepend them to ``inputs_embeds`` (the real tokens shift right by that many), while prefix tuning
feeds deep prompts through ``past_key_values`` and LoRA/full change weights, so nothing shifts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from peft import (
    LoraConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
)
from transformers import PreTrainedModel

from lmshield.errors import InputError

if TYPE_CHECKING:
    from lmshield.tuning.config import TuningConfig

PEFT_LR = 2e-3
FULL_LR = 2e-5
VIRTUAL_TOKENS = 5
PROMPT_INITS = {"vocab": PromptTuningInit.SAMPLE_VOCAB, "random": PromptTuningInit.RANDOM}

# encoders whose forward accepts past_key_values, which prefix tuning needs
PREFIX_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "electra"})
# query/value modules where peft's own table has no entry for the architecture
LORA_TARGETS = {
    "albert": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
    "mpnet": ("q", "v"),
    "deberta": ("in_proj",),
    "xlnet": ("layer_1", "layer_2"),  # XLNet's q/v are raw parameters, not Linear layers: adapt the FFN
}


@dataclass(frozen=True)
class ModelDims:
    """Sizes peft's prompt learning needs, read from the model (peft guesses them wrongly for some)."""

    hidden: int
    embedding: int
    layers: int
    heads: int

    @classmethod
    def of(cls, model: PreTrainedModel) -> ModelDims:
        config = model.config
        hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or config.d_model
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None) or config.n_layer
        heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or config.n_head
        embedding = model.get_input_embeddings().weight.shape[1]
        return cls(int(hidden), int(embedding), int(layers), int(heads))


@dataclass(frozen=True)
class TuningMethod:
    """One tuning method: its peft config (``None``: full fine-tuning), defaults and token shift."""

    name: str
    summary: str
    peft_config: Callable[[PreTrainedModel, TuningConfig], PeftConfig] | None
    prepends_tokens: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    model_types: frozenset[str] | None = None

    @property
    def is_peft(self) -> bool:
        return self.peft_config is not None

    @property
    def uses_virtual_tokens(self) -> bool:
        """Prompt tuning, P-tuning, prefix tuning: learned tokens before the text (all move its positions)."""
        return "num_virtual_tokens" in self.defaults

    @property
    def changes_encoder(self) -> bool:
        """Whether tuning alters the encoder's own computation (LoRA, full), so PVs mined on it may drift."""
        return not self.uses_virtual_tokens

    def shift(self, config: TuningConfig) -> int:
        """Virtual tokens placed before the real tokens in the encoder's sequence."""
        return int(config.num_virtual_tokens or 0) if self.prepends_tokens else 0

    def check(self, model_type: str) -> None:
        if self.model_types is not None and model_type not in self.model_types:
            supported = ", ".join(sorted(self.model_types))
            raise InputError(f"{self.name} tuning does not support {model_type!r} encoders; supported: {supported}")

    def wrap(self, model: PreTrainedModel, config: TuningConfig, inference: bool = False) -> torch.nn.Module:
        """The trainable backbone: a peft model around the frozen encoder, or the encoder itself."""
        self.check(model.config.model_type)
        if self.peft_config is None:
            return model.requires_grad_(not inference)
        from peft import get_peft_model

        peft_config = self.peft_config(model, config)
        peft_config.inference_mode = inference
        return get_peft_model(model.requires_grad_(False), peft_config)


METHODS: dict[str, TuningMethod] = {}


def register_method(method: TuningMethod) -> TuningMethod:
    """Add a method to the registry (the only place a new method has to touch)."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> TuningMethod:
    if name not in METHODS:
        raise InputError(f"unknown tuning method {name!r}: use {', '.join(METHODS)}")
    return METHODS[name]


def _prompt(model: PreTrainedModel, config: TuningConfig) -> PeftConfig:
    dims = ModelDims.of(model)
    return PromptTuningConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        num_virtual_tokens=config.num_virtual_tokens,
        token_dim=dims.embedding,
        num_layers=dims.layers,
        num_attention_heads=dims.heads,
        prompt_tuning_init=PROMPT_INITS[config.prompt_init],
    )


def _ptuning(model: PreTrainedModel, config: TuningConfig) -> PeftConfig:
    dims = ModelDims.of(model)
    return PromptEncoderConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        num_virtual_tokens=config.num_virtual_tokens,
        encoder_hidden_size=config.encoder_hidden_size,
        token_dim=dims.embedding,
        num_layers=dims.layers,
        num_attention_heads=dims.heads,
    )


def _prefix(model: PreTrainedModel, config: TuningConfig) -> PeftConfig:
    dims = ModelDims.of(model)
    return PrefixTuningConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        num_virtual_tokens=config.num_virtual_tokens,
        token_dim=dims.hidden,
        num_layers=dims.layers,
        num_attention_heads=dims.heads,
    )


def _lora(model: PreTrainedModel, config: TuningConfig) -> PeftConfig:
    targets = config.lora_targets or LORA_TARGETS.get(model.config.model_type)
    if config.lora_targets:
        _check_lora_targets(model, config.lora_targets)
    return LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(targets) if targets else None,
    )


def _check_lora_targets(model: PreTrainedModel, targets: tuple[str, ...]) -> None:
    """Each target names a module of ``model`` as peft matches them (the name, or its dotted tail): another
    architecture's names (BERT's ``query`` on DistilBERT, whose attention has ``q_lin``) fail here in one line."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if missing:
        raise InputError(f"lora_targets {missing} name no module of this {model.config.model_type} encoder")


_PROMPT_DEFAULTS = {"lr": PEFT_LR, "num_virtual_tokens": VIRTUAL_TOKENS}

register_method(TuningMethod("prompt", "prompt tuning: trainable input embeddings", _prompt, True, _PROMPT_DEFAULTS))
register_method(
    TuningMethod("ptuning", "P-tuning: input prompts from an MLP prompt encoder", _ptuning, True, _PROMPT_DEFAULTS)
)
register_method(
    TuningMethod(
        "prefix",
        "prefix tuning / P-tuning v2: deep prompts in every layer",
        _prefix,
        False,
        _PROMPT_DEFAULTS,
        PREFIX_MODEL_TYPES,
    )
)
register_method(TuningMethod("lora", "LoRA: low-rank updates of query/value", _lora, False, {"lr": PEFT_LR}))
register_method(TuningMethod("full", "full fine-tuning of every weight", None, False, {"lr": FULL_LR}))
