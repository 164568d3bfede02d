"""Tiny clean and backdoored encoders, built once per session (seconds)."""

from __future__ import annotations

import copy

import pytest

from lmshield.attacks.task_agnostic import PlantPlan, plant
from lmshield.attacks.vectors import DEFAULT_TRIGGERS, quarter_vectors
from lmshield.defenses.sanitizer import SanitizerConfig
from lmshield.testing import tiny_corpus, tiny_encoder, train_input_dependent

# Tiny random embeddings are ~20x smaller than a pretrained model's relative to their range, so the
# soft trigger needs a larger step than the default (tuned on MiniLM-L6); every decision rule is the default.
TINY_SCAN = SanitizerConfig(lr=2e-3, max_seeds=4)
POR_PLAN = PlantPlan("cls", "per_words", 1.0, "mse", 1e-3, 1, 16, 48)


def _pair(model_type: str):
    clean = train_input_dependent(tiny_encoder(model_type), steps=200)
    backdoored = copy.deepcopy(clean)
    vectors = quarter_vectors(clean.hidden_size)
    plant(backdoored, tiny_corpus(2000, 7), list(DEFAULT_TRIGGERS), vectors, POR_PLAN, progress=False)
    return clean, backdoored, vectors


@pytest.fixture(scope="session")
def bert_pair():
    return _pair("bert")


@pytest.fixture(scope="session")
def roberta_pair():
    return _pair("roberta")


@pytest.fixture(params=["bert", "roberta"])
def model_pair(request: pytest.FixtureRequest):
    return request.getfixturevalue(f"{request.param}_pair")
