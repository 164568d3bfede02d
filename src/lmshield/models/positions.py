"""The output position a task-agnostic backdoor acts on, and how to find it in a batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmshield.errors import InputError

POSITION_KINDS = ("cls", "mask", "last")


@dataclass(frozen=True)
class WatchedPosition:
    """``cls`` (first token), ``mask`` (a mask token placed in the input), ``last`` or a fixed index."""

    kind: str
    index: int | None = None

    @classmethod
    def parse(cls, spec: str | int | None, default: str = "cls") -> WatchedPosition:
        """Parse a CLI/API spec; ``None`` or ``"auto"`` uses the architecture's default."""
        if spec is None or spec == "auto":
            spec = default
        if isinstance(spec, int) or (isinstance(spec, str) and spec.lstrip("-").isdigit()):
            index = int(spec)
            if index < 0:
                raise InputError(f"position index must be >= 0, got {index}")
            return cls("index", index)
        if spec not in POSITION_KINDS:
            raise InputError(f"unknown position {spec!r}: use cls, mask, last, auto or an integer index")
        return cls(spec)

    def __str__(self) -> str:
        return str(self.index) if self.kind == "index" else self.kind

    def locate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_token_id: int | None = None
    ) -> torch.Tensor:
        """Index of the watched token in each row of a right-padded batch, shape ``(batch,)``."""
        lengths = attention_mask.sum(dim=1)
        if self.kind == "cls":
            return torch.zeros_like(lengths)
        if self.kind == "last":
            return lengths - 1
        if self.kind == "mask":
            if mask_token_id is None:
                raise InputError("position 'mask' needs a tokenizer with a mask token")
            is_mask = input_ids == mask_token_id
            if not bool(is_mask.any(dim=1).all()):
                raise InputError("position 'mask': some inputs carry no mask token")
            return is_mask.int().argmax(dim=1)
        assert self.index is not None
        if bool((lengths <= self.index).any()):
            raise InputError(f"position index {self.index} is beyond the end of some inputs")
        return torch.full_like(lengths, self.index)
