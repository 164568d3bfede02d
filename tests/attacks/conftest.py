from __future__ import annotations

from pathlib import Path

import pytest

from tests.attacks.tiny_models import make_tiny, make_tiny_mlm


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny-trained"))


@pytest.fixture(scope="session")
def tiny_mlm_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_mlm(tiny_dir, tmp_path_factory.mktemp("tiny-mlm"))
