from __future__ import annotations

from pathlib import Path

import pytest

from tests.attacks.tiny_models import make_tiny


@pytest.fixture(scope="session")
def zoo_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("zoo-base"))
