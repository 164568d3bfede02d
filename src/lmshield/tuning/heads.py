"""Classification heads that read one watched hidden state: a new linear head, or a released one kept.

Both map the watched state ``(batch, hidden)`` to logits, so the prediction and the output the guard
monitors come from the same forward pass.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from lmshield.errors import InputError


class LinearHead(nn.Module):
    """Dropout and a linear layer on the watched state (P-tuning v2's [CLS] classifier, or on [MASK])."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, num_labels)

    def forward(self, watched: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(watched))


# how each architecture's *ForSequenceClassification turns its summary token into logits
_RELEASED_KINDS = {
    "bert": "pooler",
    "albert": "albert",
    "roberta": "sequence",
    "xlm-roberta": "sequence",
    "electra": "sequence",
    "mpnet": "sequence",
    "deberta": "pooler",
    "deberta-v2": "pooler",
    "distilbert": "distilbert",
    "xlnet": "xlnet",
}


class ReleasedHead(nn.Module):
    """The classification head of a released ``*ForSequenceClassification`` model, fed the watched state.

    The released head is applied to the real summary token wherever it sits (after prepended virtual
    tokens too), not to whatever happens to be at index 0.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        model_type = model.config.model_type
        if model_type not in _RELEASED_KINDS:
            raise InputError(f"keeping the classification head is not supported for {model_type!r} models")
        self.kind = _RELEASED_KINDS[model_type]
        base = model.base_model
        names = {
            "pooler": ("dropout", "classifier"),
            "albert": ("dropout", "classifier"),
            "sequence": ("classifier",),
            "distilbert": ("pre_classifier", "dropout", "classifier"),
            "xlnet": ("sequence_summary", "logits_proj"),
        }[self.kind]
        parts = {name: getattr(model, name) for name in names}
        # BERT and ALBERT read the encoder's own pooler; DeBERTa's task model carries one of its own
        self.pooler_in_encoder = self.kind in ("pooler", "albert") and getattr(model, "pooler", None) is None
        if self.kind in ("pooler", "albert"):
            parts["pooler"] = getattr(model, "pooler", None) or base.pooler
            if parts["pooler"] is None:
                raise InputError(f"the released {model_type} model has no pooler to keep")
        self.parts = nn.ModuleDict(parts)

    def freeze_pooler(self) -> None:
        """Stop training the pooler (BERT's and ALBERT's in the encoder, DeBERTa's beside it), as peft's
        sequence-classification task trains only the classifier."""
        if "pooler" in self.parts:
            self.parts["pooler"].requires_grad_(False)

    def forward(self, watched: torch.Tensor) -> torch.Tensor:
        p = self.parts
        token = watched[:, None, :]  # a one-token sequence for heads that read position 0 (or the last)
        if self.kind == "pooler":
            return p["classifier"](p["dropout"](p["pooler"](token)))
        if self.kind == "albert":
            return p["classifier"](p["dropout"](torch.tanh(p["pooler"](watched))))
        if self.kind == "sequence":
            return p["classifier"](token)
        if self.kind == "distilbert":
            return p["classifier"](p["dropout"](torch.relu(p["pre_classifier"](watched))))
        return p["logits_proj"](p["sequence_summary"](token))
