"""Validation of the texts a caller hands to a detector, classifier or scan."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from lmshield.errors import InputError

logger = logging.getLogger(__name__)


def as_texts(texts: Iterable[str], *, allow_empty: bool = True, what: str = "texts") -> list[str]:
    """``texts`` as a list of strings, or :class:`InputError` for one string, a non-iterable or a non-string item.

    Any iterable is accepted (a list, a tuple, a numpy array of strings, a generator); a bare string is refused
    rather than read character by character.
    """
    if isinstance(texts, (str, bytes)):
        raise InputError(f"expected a list of {what}, got one string")
    try:
        items = list(texts)
    except TypeError:
        raise InputError(f"expected a list of {what}, got {type(texts).__name__}") from None
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise InputError(f"{what} must be strings: item {index} is {type(item).__name__}")
    if not items and not allow_empty:
        raise InputError(f"no {what} given")
    return [str(item) for item in items]


def without_blanks(texts: list[str], *, what: str = "texts") -> list[str]:
    """``texts`` less the empty or whitespace-only ones (with a warning), as the CLI's readers leave them out;
    :class:`InputError` when nothing is left."""
    kept = [text for text in texts if text.strip()]
    if texts and not kept:
        raise InputError(f"every one of the {len(texts)} {what} is empty")
    if len(kept) < len(texts):
        logger.warning("%d of %d %s are empty and are left out", len(texts) - len(kept), len(texts), what)
    return kept
