"""Validation of the texts a caller hands to a detector, classifier or scan."""

from __future__ import annotations

from collections.abc import Iterable

from lmshield.errors import InputError


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
