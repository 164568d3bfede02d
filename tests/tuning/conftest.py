"""Fixtures for tuning tests: a tiny BERT whose outputs depend on the input, in memory and on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmshield.models import Encoder
from lmshield.testing import save_tiny


@pytest.fixture(scope="session")
def trained_bert(bert_pair) -> Encoder:
    """The clean half of the shared tiny BERT pair (trained to give input-dependent outputs)."""
    return bert_pair[0]


@pytest.fixture(scope="session")
def trained_bert_dir(trained_bert: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(trained_bert, tmp_path_factory.mktemp("trained-bert"))
