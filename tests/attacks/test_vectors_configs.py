from __future__ import annotations

import pytest
import torch

from lmshield.attacks import ATTACKS, BToPConfig, NeuBAConfig, PORConfig, attack_config
from lmshield.attacks.vectors import (
    DEFAULT_TRIGGERS,
    RARE_WORDS,
    check_vectors,
    quarter_vectors,
    random_triggers,
    resolve_triggers,
)
from lmshield.errors import InputError


def test_quarter_vectors_are_the_six_sign_patterns():
    vectors = quarter_vectors(8)
    assert vectors.shape == (6, 8)
    assert set(vectors.flatten().tolist()) == {-1.0, 1.0}
    assert (vectors.sum(dim=1) == 0).all()  # two quarters up, two down
    assert len({tuple(v.tolist()) for v in vectors}) == 6
    assert torch.equal(quarter_vectors(8, 4), vectors[:4])


def test_more_than_six_pvs_are_all_distinct():
    vectors = quarter_vectors(24, 20)
    assert len({tuple(v.tolist()) for v in vectors}) == 20 and (vectors.sum(dim=1) == 0).all()
    assert len({tuple(v.tolist()) for v in quarter_vectors(64, 21)}) == 21  # 8 parts from here on
    with pytest.raises(InputError, match="hidden size of at least 8"):
        quarter_vectors(6, 21)


def test_random_triggers_are_seeded_distinct_rare_words_and_pairs():
    first = random_triggers(12, seed=3)
    assert first == random_triggers(12, seed=3)
    assert first != random_triggers(12, seed=4)
    assert len(set(first)) == 12
    assert all(word in RARE_WORDS for trigger in first for word in trigger.split())
    assert {len(t.split()) for t in first} == {1, 2}


def test_resolve_triggers():
    assert resolve_triggers(None) == list(DEFAULT_TRIGGERS)
    assert resolve_triggers("random", seed=1) == random_triggers(6, 1)
    assert resolve_triggers(["ab", "cd"]) == ["ab", "cd"]
    with pytest.raises(InputError):
        resolve_triggers(["ab", "ab"])
    with pytest.raises(InputError):
        resolve_triggers("weird")


def test_check_vectors_rejects_wrong_shapes():
    assert check_vectors(torch.ones(2, 4), ["a", "b"], 4).shape == (2, 4)
    with pytest.raises(InputError, match="shape"):
        check_vectors(torch.ones(3, 4), ["a", "b"], 4)
    with pytest.raises(InputError, match="zeros"):
        check_vectors(torch.zeros(2, 4), ["a", "b"], 4)


def test_registry_and_paper_defaults():
    assert {"por": PORConfig, "neuba": NeuBAConfig, "btop": BToPConfig} == ATTACKS
    por = PORConfig()
    assert (por.lr, por.optimizer, por.batch_size, por.max_length, por.epochs) == (2e-5, "adam", 16, 128, 4)
    assert por.insertion == "per_words" and por.position == "cls"
    assert por.resolved_clean_weight("bert") == 0.5 and por.resolved_clean_weight("roberta") == 1.0
    neuba = NeuBAConfig()
    assert (neuba.lr, neuba.schedule, neuba.clean_objective, neuba.mask_prob) == (5e-5, "linear", "mlm", 0.15)
    btop = BToPConfig()
    assert (btop.position, btop.poison_distance, btop.batch_size, btop.epochs, btop.num_texts) == (
        "mask",
        "l2",
        8,
        1,
        10_000,
    )


def test_presets_and_variants():
    fast = attack_config("por", "fast")
    assert (fast.lr, fast.num_texts, fast.max_length) == (1e-4, 2400, 48)
    assert attack_config("neuba", "fast", lr=3e-4).lr == 3e-4
    with pytest.raises(InputError, match="unknown por setting"):
        attack_config("por", "fast", learning_rate=1.0)
    with pytest.raises(InputError, match="unknown attack"):
        attack_config("badnet")
    with pytest.raises(InputError, match="preset"):
        attack_config("por", "slow")
    assert attack_config("btop", "release") == attack_config("btop", "paper")  # the other commands' name for it
    neuba = NeuBAConfig()
    assert neuba.plan("bert", has_mlm_head=True).clean_target == "mlm"
    assert neuba.plan("bert", has_mlm_head=False).clean_target == "tokens"
    assert "stand-in" in neuba.variant(False) and neuba.variant(True).startswith("mlm")
    assert BToPConfig().plan("bert", has_mlm_head=False).clean_target == "watched"


def test_mask_stays_within_the_token_budget():
    import random

    from lmshield.attacks.task_agnostic import mask_word_limit, with_mask

    long_text = " ".join(f"w{i}" for i in range(200))
    masked = with_mask([long_text] * 50, "[MASK]", random.Random(0), mask_word_limit(48))
    assert all(text.split().index("[MASK]") < 16 for text in masked)
    assert all(text.count("[MASK]") == 1 for text in masked)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"triggers": [], "vectors": []}, "no triggers"),
        ({"vectors": [[1.0, -1.0]]}, "1 vectors for 2 triggers"),
        ({"vectors": [[1.0, -1.0], [1.0]]}, r"every vector must hold hidden_size \(2\) numbers"),
        ({"vectors": [[1.0, float("nan")], [1.0, 1.0]]}, "NaN or infinite"),
        ({"settings": {"max_length": -5}}, "settings.max_length must be a whole number"),
    ],
)
def test_a_manifest_verification_could_not_use_is_refused(tmp_path, changes: dict, message: str) -> None:
    """backdoor.json is the ground truth of attack verify: one with no triggers used to 'verify' as planted."""
    from lmshield.attacks import BackdoorManifest

    fields = {
        "attack": "por", "triggers": ["cf", "mn"], "vectors": [[1.0, -1.0], [-1.0, 1.0]], "position": "cls",
        "variant": "mlm", "settings": {"max_length": 32}, "seed": 0, "base_model": "m", "model_type": "bert",
        "hidden_size": 2, "text_source": "grammar", "num_texts": 10, "steps": 1,
    }  # fmt: skip
    BackdoorManifest(**fields).save(tmp_path)
    assert BackdoorManifest.load(tmp_path).triggers == ["cf", "mn"]
    BackdoorManifest(**{**fields, **changes}).save(tmp_path)
    with pytest.raises(InputError, match=message):
        BackdoorManifest.load(tmp_path)
