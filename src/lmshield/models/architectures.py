"""Encoder architectures lmshield supports, and where each one's backdoor usually acts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """What lmshield needs to know about one ``model_type``."""

    model_type: str
    default_position: str  # "cls" (first token) or "last" (models that summarise at the end)


_ARCHITECTURES = {
    arch.model_type: arch
    for arch in (
        Architecture("bert", "cls"),
        Architecture("roberta", "cls"),
        Architecture("xlm-roberta", "cls"),
        Architecture("albert", "cls"),
        Architecture("deberta", "cls"),
        Architecture("deberta-v2", "cls"),
        Architecture("distilbert", "cls"),
        Architecture("electra", "cls"),
        Architecture("mpnet", "cls"),
        Architecture("xlnet", "last"),
    )
}


def supported_model_types() -> list[str]:
    """The ``model_type`` values lmshield can load, sorted."""
    return sorted(_ARCHITECTURES)


def get_architecture(model_type: str) -> Architecture | None:
    """The architecture entry for ``model_type``, or ``None`` when unsupported."""
    return _ARCHITECTURES.get(model_type)
