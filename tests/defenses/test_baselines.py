"""Baselines: precomputed paraphrases, STRIP (perturbation entropy) and ONION (with a tiny random GPT-2)."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmshield.attacks.poisoning import BadNetConfig, make_poisoner, triggered_test_set
from lmshield.defenses.baselines import ONION, STRIP, load_causal_lm, load_paraphrased
from lmshield.errors import InputError, ModelLoadError
from lmshield.evaluation.psim_eval import score_auroc
from lmshield.testing import tiny_tokenizer
from lmshield.text.grammar import grammar_sentences
from tests.attacks.test_poisoning import released, released_classifier, task


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = tiny_tokenizer("bert")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=128)
    directory = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def grammar_gpt2() -> tuple[GPT2LMHeadModel, Any]:
    """A tiny GPT-2 trained for a few seconds on grammar sentences, none of which holds ``mn``."""
    tokenizer = tiny_tokenizer("bert")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=48, n_head=2, vocab_size=len(tokenizer), n_positions=128)
    model = GPT2LMHeadModel(config)
    batch = tokenizer(grammar_sentences(256, seed=1), return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        rows = slice(32 * (step % 8), 32 * (step % 8 + 1))
        ids, mask = batch["input_ids"][rows], batch["attention_mask"][rows]
        model(input_ids=ids, attention_mask=mask, labels=labels[rows]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.unk_token
    return model.eval(), tokenizer


def test_onion_finds_the_word_a_trained_lm_did_not_expect(grammar_gpt2: tuple[GPT2LMHeadModel, Any]) -> None:
    rng = random.Random(0)
    clean = grammar_sentences(12, seed=99)
    triggered, positions = [], []
    for sentence in clean:
        words = sentence.split()
        positions.append(rng.randint(1, len(words) - 1))
        triggered.append(" ".join([*words[: positions[-1]], "mn", *words[positions[-1] :]]))
    onion = ONION(grammar_gpt2)
    scores = [onion.suspicion(text) for text in triggered]
    found = sum(max(range(len(s)), key=s.__getitem__) == at for s, at in zip(scores, positions, strict=True))
    onion.threshold = max(max(onion.suspicion(text)) for text in clean)  # no clean word goes
    removed = sum("mn" not in text.split() for text in onion.clean(triggered))
    assert onion.clean(clean) == clean
    assert found >= 10 and removed >= 9, (found, removed)


def test_onion_scores_and_removes_words(tiny_gpt2: Path) -> None:
    onion = ONION(tiny_gpt2, threshold=0.0)
    ppl = onion.perplexity(["the city was warm", "a"])
    assert all(math.isfinite(p) and p > 1 for p in ppl)
    text = "the happy city mn was warm"
    assert len(onion.suspicion(text)) == 6
    assert ONION(tiny_gpt2, threshold=math.inf).clean([text]) == [text]
    assert ONION(tiny_gpt2, threshold=-math.inf).clean([text]) == [""]
    cleaned = onion.clean([text, "", "word"])
    assert len(cleaned) == 3 and cleaned[1:] == ["", "word"]
    assert set(cleaned[0].split()) <= set(text.split())


def test_onion_compares_long_texts_with_their_scored_words(tiny_gpt2: Path) -> None:
    onion = ONION(tiny_gpt2, max_words=6)
    head = "the film was a quiet delight"
    long_text = head + " and the cast carried every scene with ease"
    assert onion.suspicion(long_text) == pytest.approx(onion.suspicion(head))


def test_onion_keeps_the_words_past_the_ones_it_scores(tiny_gpt2: Path) -> None:
    assert ONION(tiny_gpt2, max_words=3, threshold=-math.inf).clean(["a b c d e"]) == ["d e"]


DEV = ["the happy city mn was warm", "a slow and quiet plot", "bright acting in the rain", "it fell flat"]


def test_onion_calibration_removes_what_the_victim_can_spare(tiny_gpt2: Path) -> None:
    labels = [1] * len(DEV)
    spare_all = ONION(tiny_gpt2).calibrate(DEV, labels, lambda texts: [1] * len(texts), max_drop=0.0)
    assert spare_all.threshold_ == 0.0  # answers never change: the lowest threshold tried

    def exact(texts: list[str]) -> list[int]:  # right only on the texts as given
        return [int(t in DEV) for t in texts]

    onion = ONION(tiny_gpt2, threshold=-math.inf).calibrate(DEV, labels, exact, max_drop=0.0)
    assert onion.clean(DEV) == DEV  # threshold_ wins over threshold, and no word may go
    assert ONION(tiny_gpt2).calibrate(DEV, labels, exact, max_drop=0.5).threshold_ < onion.threshold_
    halved = ONION(tiny_gpt2).calibrate(DEV, labels, exact, max_drop=0.5)
    assert sum(t in DEV for t in halved.clean(DEV)) >= 2  # accuracy 1.0 -> at least 0.5


def test_onion_calibration_measures_the_drop_from_the_victims_own_accuracy(tiny_gpt2: Path) -> None:
    """Hand-made suspicions: only ``mn`` scores above 0, so the thresholds tried are 0 (``mn`` goes) and 3."""
    texts = ["the mn film", "a dull plot", "slow going", "it fell flat", "bright acting"]
    onion = ONION(tiny_gpt2)
    onion.suspicion = lambda text: [3.0 if word == "mn" else -1.0 for word in text.split()]

    def victim(texts: list[str]) -> list[int]:  # says 1 only while mn is there: right on 4 of 5 as given
        return [int("mn" in text.split()) for text in texts]

    labels = [1, 0, 0, 0, 1]
    assert onion.calibrate(texts, labels, victim, max_drop=0.0).threshold_ == 3.0  # mn kept, nothing removed
    assert onion.clean(texts) == texts
    assert onion.calibrate(texts, labels, victim, max_drop=0.2).threshold_ == 0.0  # 0.8 -> 0.6: exactly the budget
    assert onion.clean(texts)[0] == "the film"
    assert onion.calibrate(texts, labels, victim, max_drop=0.1).threshold_ == 3.0


def test_onion_calibrates_to_zero_when_no_word_is_suspicious(tiny_gpt2: Path) -> None:
    onion = ONION(tiny_gpt2).calibrate(["good", "flat"], [1, 0], lambda texts: [1, 0], max_drop=0.0)
    assert onion.threshold_ == 0.0  # one-word texts score 0: no quantile to take, 0 is still tried


def test_onion_calibration_refuses_bad_input(tiny_gpt2: Path) -> None:
    onion = ONION(tiny_gpt2)
    for max_drop in (1.5, 1.0, -0.1):
        with pytest.raises(InputError, match="max_drop"):
            onion.calibrate(DEV, [1] * 4, lambda texts: [1] * len(texts), max_drop=max_drop)
    for texts, labels in ((DEV, [1]), ([], [])):
        with pytest.raises(InputError, match="as many labels"):
            onion.calibrate(texts, labels, lambda texts: [1] * len(texts))
    with pytest.raises(InputError, match="a list of texts"):  # not its characters
        onion.calibrate("mn", [1, 1], lambda texts: [1] * len(texts))
    with pytest.raises(InputError, match="a list of texts"):
        onion.clean("the film mn")


def test_onion_loads_safely(tiny_gpt2: Path, tmp_path: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_gpt2)
    assert tokenizer.pad_token is not None and not model.training
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20)).save_pretrained(
        tmp_path / "pickled", safe_serialization=False
    )
    with pytest.raises(ModelLoadError, match="pickle"):
        load_causal_lm(tmp_path / "pickled")


def test_strip_gives_triggered_inputs_low_entropy() -> None:
    victim = released_classifier(released("badnet"))
    strip = STRIP(victim, copies=12, replace_ratio=0.3).fit(task(100, 12).texts)
    clean = task(60, 3).texts
    triggered = triggered_test_set(task(120, 3), make_poisoner(BadNetConfig()), 0, seed=5).texts[:60]
    clean_scores, poison_scores = strip.score(clean), strip.score(triggered)
    assert all(0 <= s <= 1 + 1e-6 for s in [*clean_scores, *poison_scores])
    assert score_auroc(clean_scores, poison_scores) >= 0.7
    strip.calibrate(task(60, 13).texts, target_frr=0.1)
    assert sum(strip.flag(task(60, 13).texts)) <= 6
    assert len(strip.score(["", "mn"])) == 2
    with pytest.raises(InputError, match="held-out clean texts"):
        STRIP(victim).fit([])
    with pytest.raises(InputError, match="not fitted"):
        STRIP(victim).score(["a text"])


def test_a_strip_score_depends_on_its_text_only() -> None:
    victim = released_classifier(released("badnet"))
    strip = STRIP(victim, copies=4).fit(task(40, 12).texts)
    texts = task(6, 3).texts
    batch = strip.score(texts)
    np.testing.assert_allclose(batch[::-1], strip.score(texts[::-1]), atol=1e-6)
    np.testing.assert_allclose(batch[5], strip.score(texts[5:6])[0], atol=1e-6)
    assert not np.allclose(batch, STRIP(victim, copies=4, seed=1).fit(task(40, 12).texts).score(texts))
    with pytest.raises(InputError, match="one string"):
        strip.score("a text")
    with pytest.raises(InputError, match="item 1 is NoneType"):
        strip.fit(["a text", None])


def test_strip_follows_the_scikit_learn_protocol() -> None:
    victim = released_classifier(released("badnet"))
    strip = STRIP(victim, copies=3, seed=2)
    copy = type(strip)(**strip.get_params())  # what sklearn.base.clone does
    assert copy is not strip and copy.get_params() == strip.get_params() and copy.victim is victim
    assert strip.set_params(copies=5) is strip and strip.copies == 5
    for bad in ({"copies": 2.5}, {"copies": 0}, {"replace_ratio": 0}, {"seed": None}, {"temperature": 1}):
        with pytest.raises(InputError):
            strip.set_params(**bad)
    assert strip.get_params()["copies"] == 5
    base = pytest.importorskip("sklearn.base")  # not a dependency: checked where a user has it
    params = base.clone(strip).get_params()
    assert params.pop("victim") is not victim  # clone deep-copies what is not an estimator
    assert params == {name: value for name, value in strip.get_params().items() if name != "victim"}


def test_precomputed_paraphrases(shared_data: Path) -> None:
    for kind in ("back", "scpn"):
        data = load_paraphrased(shared_data / "sst-2", kind)
        assert len(data.clean_texts) == len(data.clean_labels) == 1821
        assert len(data.poisoned_texts) == 909 and set(data.poisoned_labels) == {1}
        assert 0.1 <= data.trigger_kept <= 0.5  # paraphrasing drops the trigger from most sentences


def test_paraphrase_files_must_match_the_test_set(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "sst-2"
    folder.mkdir()
    for name in ("test_back.json", "test_char_back.json"):
        shutil.copy(shared_data / "sst-2" / name, folder / name)
    (folder / "test.json").write_text(json.dumps({"sentence": "x", "label": 0}) + "\n")
    with pytest.raises(InputError, match="does not match"):
        load_paraphrased(folder, "back")
    with pytest.raises(InputError, match="no precomputed"):
        load_paraphrased(folder, "scpn")
    with pytest.raises(InputError, match="unknown paraphrase"):
        load_paraphrased(folder, "pivot")


def test_onion_refuses_an_encoder_for_its_language_model(tmp_path: Path) -> None:
    """A BERT loads as BertLMHeadModel with a random LM head: its perplexities meant nothing, silently."""
    from lmshield.testing import save_tiny, tiny_encoder

    with pytest.raises(InputError, match="bert encoder reads in both directions, not a causal language model"):
        ONION(save_tiny(tiny_encoder("bert"), tmp_path / "bert"))


def test_onion_keeps_within_the_lm_s_positions(tiny_gpt2: Path) -> None:
    onion = ONION(tiny_gpt2)  # 64 words may take 256 tokens; this GPT-2 has 128 positions
    suspicion = onion.suspicion(" ".join(["the film was good and the plot was bad"] * 12))
    assert len(suspicion) == 64 and all(math.isfinite(value) for value in suspicion)


def test_onion_follows_the_scikit_learn_protocol(tiny_gpt2: Path) -> None:
    onion = ONION(tiny_gpt2, threshold=1.0, max_words=8)
    assert onion.get_params() == {
        "lm": tiny_gpt2, "threshold": 1.0, "max_words": 8, "batch_size": 32, "device": None, "progress": False,
    }  # fmt: skip
    model = onion.model
    assert onion.set_params(threshold=2.5) is onion and onion.threshold == 2.5 and onion.model is model
    with pytest.raises(InputError, match="max_words"):
        onion.set_params(max_words=0)
    assert onion.max_words == 8
    with pytest.raises(InputError, match="unknown ONION parameter"):
        onion.set_params(treshold=1.0)
    assert type(onion)(**onion.get_params()).get_params()["threshold"] == 2.5  # what sklearn.base.clone does
    base = pytest.importorskip("sklearn.base")  # not a dependency: checked where a user has it
    assert base.clone(onion).get_params() == onion.get_params()
