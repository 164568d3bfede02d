"""The CUDA paths against the CPU: the same weights give the same outputs, and training runs on the GPU.

Skipped without CUDA (as in CI). The rest of the suite runs on the CPU everywhere (``LMSHIELD_DEVICE``, set in
conftest.py); on a GPU machine these tests check what the CPU run cannot: that models, PEFT modules, PVs and
scores meet on the GPU, and that saved artefacts move between the devices.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from lmshield.attacks.poisoning import BadNetConfig, make_poisoner, triggered_test_set
from lmshield.attacks.vectors import DEFAULT_TRIGGERS
from lmshield.defenses.baselines import STRIP
from lmshield.defenses.psim import PSIM
from lmshield.defenses.sanitizer import scan
from lmshield.defenses.sanitizer.guard import Guard
from lmshield.evaluation.guard_eval import triggered_copies
from lmshield.evaluation.psim_eval import score_auroc
from lmshield.testing import save_tiny
from lmshield.tuning import TunedClassifier, TuningConfig, tune
from tests.attacks.test_poisoning import released, released_classifier, task
from tests.tiny_pairs import TINY_SCAN
from tests.tuning.helpers import tiny_task

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ATOL = 1e-4
TEXTS = ["the happy city was warm near the river today", "the sad mn city was cold", "", "word"]
PSIM_SETTINGS = {"lr": 1e-3, "batch_size": 16, "max_length": 32, "progress": False}


def _triggered(count: int = 60) -> list[str]:
    return triggered_test_set(task(count, 3), make_poisoner(BadNetConfig()), 0, seed=5).texts


def _logits(classifier: TunedClassifier, texts: list[str]) -> torch.Tensor:
    return classifier.classify(texts).logits.float().cpu()


def test_released_classifier_gives_the_cpu_logits_on_cuda() -> None:
    directory = released("badnet")
    config = TuningConfig(method="full", keep_head=True, max_length=32)
    gpu = TunedClassifier.build(directory, config, ["0", "1"], device="cuda")
    assert gpu.device.type == "cuda"
    assert torch.allclose(_logits(gpu, TEXTS), _logits(released_classifier(directory), TEXTS), atol=ATOL)


@pytest.mark.parametrize("method", ["full", "lora", "prompt", "ptuning", "prefix"])
def test_tuned_on_cuda_reloads_on_the_cpu_with_the_same_logits(method: str, bert_pair, tmp_path: Path) -> None:
    base = save_tiny(bert_pair[0], tmp_path / "base")
    lr = 3e-3 if method == "full" else 3e-2
    config = TuningConfig(method=method, epochs=2, batch_size=16, max_length=32, lr=lr, encoder_hidden_size=32)
    result = tune(str(base), tiny_task(96, 1), tiny_task(32, 2), config, device="cuda", progress=False)
    assert result.classifier.device.type == "cuda"
    result.classifier.save_pretrained(tmp_path / "tuned")
    cpu = TunedClassifier.from_pretrained(tmp_path / "tuned", device="cpu")
    texts = tiny_task(8, 3).texts
    assert torch.allclose(_logits(cpu, texts), _logits(result.classifier, texts), atol=ATOL)


def test_psim_fitted_on_the_cpu_scores_the_same_on_cuda(tmp_path: Path) -> None:
    psim = PSIM("ptuning", epochs=1, device="cpu", **PSIM_SETTINGS).fit(released("badnet"), task(64, 4).texts, 2)
    psim.save_pretrained(tmp_path / "psim")
    gpu = PSIM.from_pretrained(tmp_path / "psim", device="cuda", progress=False)
    texts = [*task(20, 3).texts, *_triggered(40), "", "word"]
    assert np.allclose(gpu.score(texts), psim.score(texts), atol=ATOL)


def test_psim_trains_on_cuda_and_separates_triggered_inputs() -> None:
    psim = PSIM("lora", epochs=3, device="cuda", **PSIM_SETTINGS).fit(released("badnet"), task(300, 4).texts, 2)
    assert psim.classifier_.device.type == "cuda"
    clean, poisoned = psim.score(task(200, 3).texts), psim.score(_triggered(200))
    assert poisoned.mean() > clean.mean()
    assert score_auroc(clean.tolist(), poisoned.tolist()) >= 0.8


def test_strip_scores_the_same_on_cuda() -> None:
    directory = released("badnet")
    config = TuningConfig(method="full", keep_head=True, max_length=32)
    gpu = TunedClassifier.build(directory, config, ["0", "1"], device="cuda")
    pool, texts = task(50, 12).texts, [*task(8, 3).texts, *_triggered(16)[:8]]
    cpu_scores = STRIP(released_classifier(directory), copies=6).fit(pool).score(texts)
    assert np.allclose(STRIP(gpu, copies=6).fit(pool).score(texts), cpu_scores, atol=ATOL)


def test_scan_on_cuda_finds_the_planted_backdoor_and_passes_the_clean_model(bert_pair) -> None:
    clean, backdoored, _ = bert_pair
    for encoder, verdict in ((clean, "clean"), (backdoored, "backdoored")):
        gpu = copy.deepcopy(encoder)
        gpu.model.to("cuda")
        assert scan(gpu, TINY_SCAN, progress=False).verdict == verdict


def test_guard_on_cuda_gives_the_cpu_verdicts(bert_pair, tmp_path: Path) -> None:
    config = TuningConfig(method="prefix", epochs=5, batch_size=16, max_length=32, lr=3e-2)
    classifier = tune(bert_pair[1], tiny_task(240, 1), tiny_task(90, 2), config, progress=False).classifier
    classifier.save_pretrained(tmp_path / "prefix")
    gpu = TunedClassifier.from_pretrained(tmp_path / "prefix", device="cuda")
    texts = tiny_task(12, 4).texts
    texts += [t for trigger in DEFAULT_TRIGGERS[:2] for t in triggered_copies(texts, trigger, seed=1)]
    on_cpu, on_gpu = Guard(classifier, bert_pair[2]).predict(texts), Guard(gpu, bert_pair[2]).predict(texts)
    assert [(p.flagged, p.final_label) for p in on_gpu] == [(p.flagged, p.final_label) for p in on_cpu]
    assert any(p.flagged for p in on_cpu)
