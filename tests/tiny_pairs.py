"""Tiny clean and POR-backdoored encoders shared by the defense and CLI tests (seconds to build)."""

from __future__ import annotations

import copy

from lmshield.attacks.task_agnostic import PlantPlan, plant
from lmshield.attacks.vectors import DEFAULT_TRIGGERS, quarter_vectors
from lmshield.defenses.sanitizer import SanitizerConfig
from lmshield.testing import tiny_corpus, tiny_encoder, train_input_dependent

# Tiny random embeddings are ~20x smaller than a pretrained model's relative to their range, so the
# soft trigger needs a larger step than the default (tuned on MiniLM-L6); every decision rule is the default.
TINY_SCAN = SanitizerConfig(lr=2e-3, max_seeds=4)
POR_PLAN = PlantPlan("cls", "per_words", 1.0, "mse", 1e-3, 1, 16, 48)


def make_pair(model_type: str):
    clean = train_input_dependent(tiny_encoder(model_type), steps=200)
    backdoored = copy.deepcopy(clean)
    vectors = quarter_vectors(clean.hidden_size)
    plant(backdoored, tiny_corpus(2000, 7), list(DEFAULT_TRIGGERS), vectors, POR_PLAN, progress=False)
    return clean, backdoored, vectors
