"""Shared fixtures: offline, single-threaded, tiny models built in the test."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The behaviour tests train tiny models whose margins were set on the CPU; CUDA draws dropout from other random
# streams, so they run on the CPU everywhere. tests/test_cuda.py checks the CUDA paths against the CPU.
os.environ.setdefault("LMSHIELD_DEVICE", "cpu")
# progress is sealed with a per-user key (lmshield.progress); the tests keep theirs out of the user's home
os.environ.setdefault("LMSHIELD_KEY_FILE", os.path.join(tempfile.gettempdir(), "lmshield-tests", "progress.key"))

from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
# one thread per pytest-xdist worker (workers share the cores), at most two in a single process
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))

# beside the project, or wherever LMSHIELD_SHARED_DATA says (a checkout elsewhere, a CI runner)
SHARED_DATA = Path(os.environ.get("LMSHIELD_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared text data; tests that need it skip when it is absent."""
    if not (SHARED_DATA / "sst-2" / "train.json").is_file():
        pytest.skip(f"{SHARED_DATA} is not available (LMSHIELD_SHARED_DATA names another place)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random BERT (safetensors + tokenizer)."""
    from lmshield.testing import save_tiny, tiny_encoder

    return save_tiny(tiny_encoder("bert"), tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def bert_pair():
    """(clean, POR-backdoored, planted vectors) for a tiny BERT."""
    from tests.tiny_pairs import make_pair

    return make_pair("bert")


@pytest.fixture(scope="session")
def roberta_pair():
    """(clean, POR-backdoored, planted vectors) for a tiny RoBERTa."""
    from tests.tiny_pairs import make_pair

    return make_pair("roberta")


@pytest.fixture(params=["bert", "roberta"])
def model_pair(request: pytest.FixtureRequest):
    return request.getfixturevalue(f"{request.param}_pair")
