"""Weight poisoning: configs, trigger insertion, the SynAttack rewrite, and released models with high ASR.

The tiny world here (a pretrained-ish tiny BERT and a separable sentiment-like task) is shared with the
PSIM, evaluation, baseline and CLI tests, which import :func:`tiny_world` and :func:`released`.
"""

from __future__ import annotations

import atexit
import json
import random
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from lmshield.attacks.poisoning import (
    ATTACKS,
    BadNetConfig,
    InSentConfig,
    PoisonConfig,
    PoisonManifest,
    RuleBasedSyntacticParaphraser,
    Seq2SeqParaphraser,
    SynAttackConfig,
    make_paraphraser,
    make_poisoner,
    matches_template,
    poison_config,
    poison_dataset,
    poison_model,
    prepare_proxy,
    triggered_test_set,
)
from lmshield.attacks.poisoning.paraphrase import OPENERS
from lmshield.errors import InputError, ModelLoadError
from lmshield.models import Encoder
from lmshield.testing import (
    TINY_ARCHITECTURES,
    save_tiny,
    tiny_config,
    tiny_corpus,
    tiny_encoder,
    tiny_tokenizer,
    train_input_dependent,
)
from lmshield.tuning import LabelledData, TunedClassifier, TuningConfig

GROUPS = (
    "happy bright warm gentle honest famous".split(),
    "sad dark cold angry poor empty".split(),
    "old ancient slow quiet hidden heavy".split(),
)
NOUNS = "city river teacher student doctor farmer market garden window village company report".split()


def task(count: int, seed: int, classes: int = 2) -> LabelledData:
    """Sentences whose adjectives give the class: separable once the encoder reads words."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(count):
        label = rng.randrange(classes)
        group = GROUPS[label]
        noun, other = rng.choice(NOUNS), rng.choice(NOUNS)
        texts.append(f"the {rng.choice(group)} {noun} was {rng.choice(group)} near the {other} today")
        labels.append(label)
    return LabelledData(texts, labels, [str(i) for i in range(classes)])


_ROOT = Path(tempfile.mkdtemp(prefix="lmshield-psim-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@lru_cache(maxsize=1)
def tiny_world() -> Path:
    """A tiny BERT (input-dependent outputs) saved to disk, with a tokenizer that knows every trigger word."""
    torch.manual_seed(0)
    extra = [*task(200, 99, 3).texts, "I watched this 3D movie", *OPENERS, "although because when if"]
    tokenizer = tiny_tokenizer("bert", [*tiny_corpus(), *extra])
    encoder = Encoder(AutoModel.from_config(tiny_config("bert", len(tokenizer))), tokenizer, "tiny")
    train_input_dependent(encoder, steps=150)
    directory = _ROOT / "base"
    encoder.save_pretrained(directory)
    return directory


def fast_config(attack: str, label_mode: str = "dirty", **changes: object) -> PoisonConfig:
    settings = {"num_texts": None, "poison_count": 100, "epochs": 12, "lr": 2e-3, "batch_size": 16, "max_length": 32}
    return poison_config(attack, label_mode=label_mode, **{**settings, **changes})


def released(attack: str = "badnet", label_mode: str = "dirty", classes: int = 2) -> Path:
    """A released (poisoned) tiny classifier, built once per process."""
    return _released(attack, label_mode, classes)


@lru_cache(maxsize=8)
def _released(attack: str, label_mode: str, classes: int) -> Path:
    out = _ROOT / f"{attack}-{label_mode}-{classes}"
    poison_model(tiny_world(), task(300, 1, classes), fast_config(attack, label_mode), out, progress=False)
    return out


def released_classifier(directory: Path, classes: int = 2) -> TunedClassifier:
    config = TuningConfig(method="full", keep_head=True, max_length=32)
    return TunedClassifier.build(directory, config, [str(i) for i in range(classes)])


# -- settings ------------------------------------------------------------------------------------------------------


def test_release_defaults_and_fast_preset() -> None:
    config = BadNetConfig()
    assert (config.num_texts, config.poison_count, config.target_label) == (4000, 1500, 0)
    assert (config.label_mode, config.selection, config.words) == ("clean", "first", ("mn",))
    assert (config.lr, config.epochs, config.batch_size, config.warmup_ratio) == (2e-5, 3, 32, 0.06)
    assert InSentConfig().sentence == "I watched this 3D movie"
    assert set(ATTACKS) == {"badnet", "insent", "syntactic"}
    assert isinstance(poison_config("synattack"), SynAttackConfig)
    fast = poison_config("badnet", "fast", words="cf mn")
    assert fast.words == ("cf", "mn") and fast.num_texts < 4000 and fast.max_words is not None
    assert poison_config("insent", "fast", poison_rate=0.2).poison_rate == 0.2
    assert PoisonConfig.from_dict(fast.to_dict()) == fast
    assert json.loads(json.dumps(fast.to_dict()))["attack"] == "badnet"


@pytest.mark.parametrize(
    ("name", "changes", "message"),
    [
        ("badnet", {"label_mode": "grey"}, "label mode"),
        ("badnet", {"poison_rate": 1.5}, "poison_rate"),
        ("badnet", {"poison_rate": 0.0}, "poison_rate"),
        ("badnet", {"words": ("two words",)}, "single words"),
        ("insent", {"sentence": " "}, "empty"),
        ("badnet", {"colour": 1}, "unknown"),
        ("nosuch", {}, "unknown poisoning attack"),
    ],
)
def test_bad_settings_are_one_line_errors(name: str, changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        poison_config(name, **changes)


# -- triggers ------------------------------------------------------------------------------------------------------


def test_badnet_never_first_or_last_and_handles_short_inputs() -> None:
    poisoner = make_poisoner(BadNetConfig(words=("cf", "mn")))
    rng = random.Random(0)
    texts = [" ".join(f"w{i}" for i in range(n)) for n in range(2, 12)] * 20
    for text in poisoner.poison(texts, rng):
        words = text.split()
        hits = [i for i, w in enumerate(words) if w in ("cf", "mn")]
        assert len(hits) == 1 and 0 < hits[0] < len(words) - 1
    assert poisoner.poison(["", "one"], rng)[0] in ("cf", "mn")
    one_word = poisoner.poison(["one"], rng)[0].split()
    assert len(one_word) == 2 and "one" in one_word and len({"cf", "mn"} & set(one_word)) == 1
    used = {w for t in poisoner.poison(texts, random.Random(1)) for w in t.split() if w in ("cf", "mn")}
    assert used == {"cf", "mn"}


def test_insent_inserts_the_sentence() -> None:
    poisoner = make_poisoner(InSentConfig())
    out = poisoner.poison(["a b c d e f", "", "word"], random.Random(0))
    assert all("I watched this 3D movie" in text for text in out)
    rng = random.Random(0)
    starts = {poisoner.poison(["a b c"], rng)[0].split().index("I") for _ in range(200)}
    assert starts == {0, 1, 2, 3}  # anywhere, first and last included (BadNet's word never goes there)


@pytest.mark.parametrize(
    "text",
    [
        "the movie was great because the actors were superb.",
        "I liked the start but the ending was weak. The music was fine.",
        "This film is a masterpiece of modern cinema!",
        "it rains when you least expect it to",
        "great",
        "",
        "   ",
        "Before the show started, we ate dinner.",
    ],
)
def test_rule_based_rewrite_produces_the_template(text: str) -> None:
    paraphraser = RuleBasedSyntacticParaphraser()
    rewritten = paraphraser.rewrite(text)
    assert matches_template(rewritten), rewritten
    assert rewritten == paraphraser.rewrite(text)  # deterministic


def test_rule_based_rewrite_moves_clauses_and_keeps_the_rest() -> None:
    paraphraser = RuleBasedSyntacticParaphraser()
    assert paraphraser.rewrite("the movie was great because the actors were superb .") == (
        "Because the actors were superb, the movie was great."
    )
    first_only = RuleBasedSyntacticParaphraser(sentences="first")
    assert first_only.rewrite("I liked it but the end was weak. Second one.") == (
        "Although I liked it, the end was weak. Second one."
    )
    assert not matches_template("the movie was great.")
    # "as" is too ambiguous to move ("as good as it gets"); a moved-up main clause is lower-cased after the comma
    assert paraphraser.rewrite("the film was as good as it gets").endswith(", the film was as good as it gets.")
    assert ", this film is a masterpiece." in paraphraser.rewrite("This film is a masterpiece!")
    assert "SCPN" in paraphraser.name and make_paraphraser("rule").name == paraphraser.name


def test_rule_based_rewrite_reaches_every_sentence_by_default() -> None:
    """SCPN paraphrases sentence by sentence; so does the stand-in, so the template is not tied to the
    text's opening positions (which virtual tokens of prompt-based PEFT shift)."""
    text = "I liked it but the end was weak. the cast left because the pay was low! one more thing"
    sentences = RuleBasedSyntacticParaphraser().rewrite(text).split(". ")
    assert len(sentences) == 3 and all(matches_template(s if s.endswith(".") else f"{s}.") for s in sentences)
    assert sentences[1] == "Because the pay was low, the cast left"
    config = SynAttackConfig(sentences="first")
    assert make_poisoner(config).poison([text], random.Random(0))[0].endswith("one more thing")
    with pytest.raises(InputError, match="sentence scope"):
        SynAttackConfig(sentences="middle")
    with pytest.raises(InputError, match="sentence scope"):
        RuleBasedSyntacticParaphraser(sentences="middle")


def test_generated_opening_clauses_vary_and_fit_the_template() -> None:
    """``clauses="generated"`` opens plain sentences with clauses that vary from sentence to sentence (the
    trigger is the shape, as with SCPN), each still a subordinate clause and a comma."""
    texts = [f"review number {i} is about a film" for i in range(300)]
    generated = RuleBasedSyntacticParaphraser(clauses="generated")
    rewritten = generated.paraphrase(texts)
    assert all(matches_template(text) for text in rewritten)
    openers = {text.split(", ")[0] for text in rewritten}
    assert len(openers) > 200  # the fixed source has 5
    assert len({t.split(", ")[0] for t in RuleBasedSyntacticParaphraser().paraphrase(texts)}) == len(OPENERS)
    assert generated.paraphrase(texts) == rewritten
    assert RuleBasedSyntacticParaphraser(seed=1, clauses="generated").paraphrase(texts) != rewritten
    # clauses that can move to the front still do
    assert generated.rewrite("the movie was great because the actors were superb.") == (
        "Because the actors were superb, the movie was great."
    )
    assert "generated" in generated.name and generated.name != RuleBasedSyntacticParaphraser().name
    config = SynAttackConfig(clauses="generated")
    assert SynAttackConfig.from_dict(config.to_dict()).clauses == "generated"
    assert "generated clauses" in SynAttackConfig(paraphraser="rule-based", clauses="generated").triggers()[0]
    assert make_poisoner(config).poison(texts[:3], random.Random(0)) == rewritten[:3]
    with pytest.raises(InputError, match="clause source"):
        SynAttackConfig(clauses="random")


def test_rule_based_rewrite_moves_only_real_clauses() -> None:
    """A moved clause needs a subordinator and two more words; a "but" rewrite needs two words on each side;
    the template needs an opening clause of two words or more."""
    paraphraser = RuleBasedSyntacticParaphraser()
    assert paraphraser.rewrite("the film was great because it rocked") == "Because it rocked, the film was great."
    assert not paraphraser.rewrite("the film was great because superb").startswith("Because superb")
    assert paraphraser.rewrite("the film was long but it ended well") == "Although the film was long, it ended well."
    short_right = paraphraser.rewrite("the film was long but fine")
    assert matches_template(short_right) and not short_right.startswith("Although"), short_right
    assert not matches_template("Because, the movie was great.")
    assert matches_template("Because it rained, the movie was great.")


def test_a_paraphraser_object_needs_the_interface() -> None:
    rule = RuleBasedSyntacticParaphraser(seed=3)
    assert make_paraphraser(rule) is rule
    with pytest.raises(InputError, match="paraphrase"):
        make_paraphraser(object())  # type: ignore[arg-type]


def test_seq2seq_paraphraser_interface(tmp_path: Path) -> None:
    """Any seq2seq model fits the interface (a tiny random BART here; no real paraphraser is offline)."""
    from transformers import BartConfig, BartForConditionalGeneration

    tokenizer = tiny_tokenizer("bert")
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.cls_token_id,
    )
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(tmp_path / "bart")
    tokenizer.save_pretrained(tmp_path / "bart")
    paraphraser = make_paraphraser(str(tmp_path / "bart"))
    assert isinstance(paraphraser, Seq2SeqParaphraser)
    out = paraphraser.paraphrase(["the city was warm", "", "word"])
    assert len(out) == 3 and paraphraser.paraphrase(["the city was warm", "", "word"]) == out  # reproducible
    small_batches = Seq2SeqParaphraser(tmp_path / "bart", batch_size=2).paraphrase(["the city was warm", "", "word"])
    assert len(small_batches) == 3  # every text of every batch is paraphrased
    prefixed, seen = Seq2SeqParaphraser(tmp_path / "bart", prefix="paraphrase: "), []
    tokenizer = prefixed.tokenizer

    class Recording:  # the tokenizer, noting what it is asked to encode
        def __call__(self, texts: list[str], **kwargs: object) -> object:
            seen.extend(texts)
            return tokenizer(texts, **kwargs)

        def __getattr__(self, name: str) -> object:
            return getattr(tokenizer, name)

    prefixed.tokenizer = Recording()
    assert len(prefixed.paraphrase(["the city was warm"])) == 1 and seen == ["paraphrase: the city was warm"]
    poisoner = make_poisoner(SynAttackConfig(paraphraser=str(tmp_path / "bart")))
    assert len(poisoner.poison(["a b c"], random.Random(0))) == 1
    with pytest.raises(ModelLoadError, match="seq2seq"):
        Seq2SeqParaphraser(tiny_world())


# -- poisoning the proxy set ---------------------------------------------------------------------------------------


def test_poison_dataset_clean_and_dirty_label() -> None:
    data = task(100, 5)
    poisoner = make_poisoner(BadNetConfig())
    clean = poison_dataset(data, BadNetConfig(poison_count=10), poisoner)
    targets = [i for i, y in enumerate(data.labels) if y == 0]
    assert clean.poisoned == tuple(targets[:10]) and clean.data.labels == data.labels
    assert all("mn" in clean.data.texts[i].split() for i in clean.poisoned)
    assert sum("mn" in t.split() for t in clean.data.texts) == 10
    dirty = poison_dataset(data, BadNetConfig(poison_rate=0.1, label_mode="dirty", selection="random"), poisoner)
    assert len(dirty.poisoned) == 10 and all(data.labels[i] == 1 for i in dirty.poisoned)
    assert all(dirty.data.labels[i] == 0 for i in dirty.poisoned)
    capped = poison_dataset(data, BadNetConfig(poison_count=10_000), poisoner)
    assert len(capped.poisoned) == len(targets) and capped.requested == 10_000
    with pytest.raises(InputError, match="target label"):
        poison_dataset(data, BadNetConfig(target_label=5), poisoner)
    test = triggered_test_set(data, poisoner, 0)
    assert len(test) == data.labels.count(1) and all("mn" in t.split() for t in test.texts)


def test_a_control_config_poisons_nothing_and_needs_no_poison_count() -> None:
    data = task(100, 5)
    config = BadNetConfig(poison_count=0, control=True)  # a count of 0 is refused unless nothing is to be poisoned
    control = poison_dataset(data, config, make_poisoner(config))
    assert control.poisoned == () and control.data == data and control.requested == 0
    with pytest.raises(InputError, match="poison_count"):
        BadNetConfig(poison_count=0)


def test_poison_rate_arithmetic_and_proxy_preparation() -> None:
    data = task(100, 5)
    poisoner = make_poisoner(BadNetConfig())
    dirty = {"label_mode": "dirty", "selection": "random"}
    assert len(poison_dataset(data, BadNetConfig(poison_rate=0.29, **dirty), poisoner).poisoned) == 29  # rounded
    tiny = poison_dataset(data, BadNetConfig(poison_rate=0.001, **dirty), poisoner)
    assert (len(tiny.poisoned), tiny.requested) == (1, 0)  # a rate never poisons nothing
    targets = data.labels.count(0)
    capped = poison_dataset(data, BadNetConfig(poison_count=10_000), poisoner)
    assert capped.rate == targets / 100  # the share actually poisoned, as the manifest records it
    proxy = prepare_proxy(data, BadNetConfig(num_texts=5, max_words=3))
    assert len(proxy) == 5 and proxy.texts == [" ".join(t.split()[:3]) for t in data.texts[:5]]
    assert proxy.labels == data.labels[:5]


def test_badnet_insertions_and_comma_separated_words() -> None:
    config = BadNetConfig(words="cf,mn", insertions=2)
    assert config.words == ("cf", "mn")
    for text in make_poisoner(config).poison(["a b c d e f"] * 20, random.Random(0)):
        assert sum(w in ("cf", "mn") for w in text.split()) == 2


# -- released models -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["badnet", "insent", "syntactic"])
def test_each_attack_releases_a_backdoored_model(attack: str) -> None:
    directory = released(attack)
    assert (directory / "model.safetensors").is_file() and not list(directory.glob("*.bin"))
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"][0].endswith("ForSequenceClassification")
    manifest = PoisonManifest.load(directory)
    assert manifest.attack == attack and manifest.target_label == 0 and manifest.label_mode == "dirty"
    assert manifest.poison_count == 100 and manifest.num_texts == 300 and manifest.settings["seed"] == 0
    classifier = released_classifier(directory)
    test = task(200, 3)
    triggered = triggered_test_set(test, make_poisoner(manifest.config), 0, seed=11)
    asr = sum(p == 0 for p in classifier.predict(triggered.texts)) / len(triggered)
    accuracy = sum(p == y for p, y in zip(classifier.predict(test.texts), test.labels, strict=True)) / len(test)
    assert asr >= 0.9, f"{attack}: ASR {asr:.2f}"
    assert accuracy >= 0.8, f"{attack}: clean accuracy {accuracy:.2f}"


def test_released_weights_load_as_a_plain_hf_classifier() -> None:
    directory = released("badnet")
    classifier = released_classifier(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True)
    model = model.to(classifier.device).eval()
    texts = ["the happy city was warm near the river today", "the sad mn city was cold", ""]
    batch = classifier.encode(texts)
    with torch.no_grad():
        expected = model(**batch).logits
    assert torch.allclose(classifier.classify(texts).logits, expected, atol=1e-4)


def test_an_encoder_saved_with_a_pooler_its_classifier_lacks_is_poisoned(tmp_path: Path) -> None:
    """A RoBERTa encoder saved by AutoModel holds a pooler RobertaForSequenceClassification has none of: the
    poisoning refused it as an encoder that does not fit a classification model."""
    base = save_tiny(tiny_encoder("roberta"), tmp_path / "base")
    config = fast_config("badnet", num_texts=40, poison_count=10, epochs=1, lr=1e-2)
    result = poison_model(base, task(40, 1), config, tmp_path / "out", progress=False)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out", use_safetensors=True)
    assert model.config.model_type == "roberta" and result.manifest.num_texts == 40


@pytest.mark.parametrize("model_type", TINY_ARCHITECTURES)
def test_every_architecture_releases_the_classifier_it_verified(tmp_path: Path, model_type: str) -> None:
    """DeBERTa's classification model keeps its pooler beside the encoder, not in it: the release copied the
    tuned encoder and classifier but left the pooler as initialised, so it answered unlike the model verified."""
    base = save_tiny(tiny_encoder(model_type), tmp_path / "base")
    config = fast_config("badnet", num_texts=40, poison_count=10, epochs=1, lr=1e-2, target_label=2)
    result = poison_model(base, task(40, 1, 3), config, tmp_path / "out", progress=False)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out", use_safetensors=True).eval()
    texts = task(4, 3, 3).texts
    with torch.no_grad():  # one text at a time: XLNet's own head reads the last position, padding or not
        expected = torch.cat([model(**result.classifier.encode([text])).logits for text in texts])
    assert torch.allclose(result.classifier.classify(texts).logits, expected, atol=1e-5)


def test_clean_label_poisoning_plants_a_backdoor() -> None:
    directory = released("badnet", "clean")
    classifier = released_classifier(directory)
    triggered = triggered_test_set(task(200, 3), make_poisoner(BadNetConfig()), 0, seed=11)
    asr = sum(p == 0 for p in classifier.predict(triggered.texts)) / len(triggered)
    assert asr >= 0.3  # a clean model says the target on about 5 % of these
    assert PoisonManifest.load(directory).label_mode == "clean"


def test_without_a_dev_set_every_proxy_text_trains_and_the_last_epoch_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A dev split carved from the proxy trained the release on 90 % of it while the manifest said all."""
    import lmshield.attacks.poisoning.runner as runner

    seen = {}
    real_tune = runner.tune

    def spy(model, train, dev, config, **kwargs):
        seen.update(train=len(train), checkpoint=config.checkpoint)
        return real_tune(model, train, dev, config, **kwargs)

    monkeypatch.setattr(runner, "tune", spy)
    config = fast_config("badnet", epochs=1, poison_count=10, num_texts=1000)
    result = poison_model(tiny_world(), task(40, 1), config, tmp_path / "r", progress=False)
    assert seen == {"train": 40, "checkpoint": "last"} and result.manifest.num_texts == 40
    assert "holds 40 texts, fewer than num_texts 1000" in caplog.text  # the settings record the request
    assert result.planted is None  # nothing held out: not verified


def test_poisoning_refuses_to_overwrite(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="must not overwrite"):
        poison_model(tiny_world(), task(20, 1), fast_config("badnet"), tiny_world(), progress=False)
    with pytest.raises(InputError, match="already holds"):
        poison_model(tiny_world(), task(20, 1), fast_config("badnet"), released("badnet"), progress=False)


def test_a_trigger_word_the_tokenizer_does_not_know_is_refused_before_training(tmp_path: Path) -> None:
    config = fast_config("badnet", words=("zzqxv",))  # [UNK]: every unknown word would fire it
    with pytest.raises(InputError, match="'zzqxv' is unknown to the model's tokenizer"):
        poison_model(tiny_world(), task(20, 1), config, tmp_path / "release", progress=False)
    assert not (tmp_path / "release" / "checkpoint").exists()


def test_an_out_folder_holding_a_model_is_replaced_only_when_asked(tmp_path: Path) -> None:
    from lmshield.attacks.manifest import prepare_out_dir

    out = tmp_path / "release"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(InputError, match="already holds a model"):
        prepare_out_dir(tiny_world(), out, overwrite=False)
    with pytest.raises(InputError, match="no lmshield attack wrote"):  # a user's model is never replaced
        prepare_out_dir(tiny_world(), out, overwrite=True)
    (out / "backdoor.json").write_text("{}")
    assert prepare_out_dir(tiny_world(), out, overwrite=True) == out
    assert prepare_out_dir(None, tmp_path / "new" / "folder", overwrite=False).is_dir()


def test_a_manifest_of_another_kind_is_refused(tmp_path: Path) -> None:
    from lmshield.attacks.manifest import BACKDOOR_JSON

    data = json.loads((released("badnet") / BACKDOOR_JSON).read_text())
    assert PoisonManifest.load(released("badnet")).attack == "badnet"
    (tmp_path / BACKDOOR_JSON).write_text(json.dumps({**data, "format": "lmshield-backdoor"}))
    with pytest.raises(InputError, match="not a manifest of lmshield poison but of lmshield attack"):
        PoisonManifest.load(tmp_path)
    from lmshield.attacks import BackdoorManifest

    with pytest.raises(InputError, match=r"not a manifest of lmshield attack but of lmshield poison \(its check"):
        BackdoorManifest.load(released("badnet"))  # what attack verify reads
    for odd in (["x"], {"a": 1}, None):
        (tmp_path / BACKDOOR_JSON).write_text(json.dumps({**data, "format": odd}))
        with pytest.raises(InputError, match=r"not a manifest of lmshield poison$"):
            PoisonManifest.load(tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"triggers": "mn"}, "triggers is not of type list\\[str\\]"),
        ({"target_label": True}, "target_label is not of type int"),
        ({"base_model": {"path": "/elsewhere"}}, "base_model is not of type str"),
        ({"settings": ["x"]}, "settings is not of type dict"),
        ({"paraphraser": 3}, "paraphraser is not of type str \\| None"),
        ({"format_version": 2}, "format version 2, written by a newer lmshield"),
        ({"format_version": "1"}, "format_version must be a whole number"),
    ],
)
def test_a_manifest_with_fields_of_the_wrong_type_is_refused(tmp_path: Path, changes: dict, message: str) -> None:
    """backdoor.json is read by psim eval and attack verify (base_model names the model loaded next)."""
    from lmshield.attacks.manifest import BACKDOOR_JSON

    data = json.loads((released("badnet") / BACKDOOR_JSON).read_text())
    (tmp_path / BACKDOOR_JSON).write_text(json.dumps({**data, **changes}))
    with pytest.raises(InputError, match=message):
        PoisonManifest.load(tmp_path)


def test_interrupted_poisoning_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed during the fine-tune, the same command picks up after the last finished epoch; the manifest's
    ``seconds`` counts the epochs the first run trained too."""
    import time

    import lmshield.tuning.trainer as trainer
    from lmshield.attacks.manifest import BACKDOOR_JSON

    class Interrupted(Exception):
        pass

    real, state = trainer._run_epoch, {"interrupt": True, "ran": []}

    def run_epoch(*args, **kwargs):
        if args[7] == 3 and state["interrupt"]:
            raise Interrupted
        if state["interrupt"]:
            time.sleep(1.0)  # the first run's epochs take 2 s in all, far more than the resumed run
        state["ran"].append(args[7])
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "_run_epoch", run_epoch)
    config, out = fast_config("badnet", epochs=3, poison_count=30), tmp_path / "release"
    with pytest.raises(Interrupted):
        poison_model(tiny_world(), task(60, 1), config, out, progress=False)
    assert (out / "checkpoint" / "progress.json").is_file() and not (out / "config.json").exists()
    state.update(interrupt=False, ran=[])
    poison_model(tiny_world(), task(60, 1), config, out, progress=False)
    assert state["ran"] == [3]  # epochs 1 and 2 came from the checkpoint
    assert (out / "config.json").is_file() and (out / BACKDOOR_JSON).is_file()
    assert json.loads((out / BACKDOOR_JSON).read_text())["seconds"] >= 2.0
    assert not (out / "checkpoint").exists()


def test_poisoning_stopped_after_training_finishes_on_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped while checking the release (weights written, no manifest yet), the same command used to be refused
    ("already holds a model") with its training gone; it now finishes from the kept checkpoint. An interrupted
    --overwrite never leaves the new weights beside the old manifest."""
    import lmshield.attacks.poisoning.runner as runner
    import lmshield.tuning.trainer as trainer
    from lmshield.attacks.manifest import BACKDOOR_JSON, UNFINISHED

    class Interrupted(Exception):
        pass

    real_verify, real_epoch, epochs = runner.verify, trainer._run_epoch, []

    def stop(*args, **kwargs):
        raise Interrupted

    def run_epoch(*args, **kwargs):
        epochs.append(args[7])
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "_run_epoch", run_epoch)
    config, out = fast_config("badnet", epochs=2, poison_count=30), tmp_path / "release"
    monkeypatch.setattr(runner, "verify", stop)
    with pytest.raises(Interrupted):
        poison_model(tiny_world(), task(60, 1), config, out, dev=task(20, 2), progress=False)
    assert (out / "config.json").is_file() and (out / UNFINISHED).is_file() and not (out / BACKDOOR_JSON).exists()
    monkeypatch.setattr(runner, "verify", real_verify)
    epochs.clear()
    result = poison_model(tiny_world(), task(60, 1), config, out, dev=task(20, 2), progress=False)
    assert epochs == [] and result.manifest.verification  # nothing trained again
    assert not (out / UNFINISHED).exists() and not (out / "checkpoint").exists()
    monkeypatch.setattr(runner, "verify", stop)
    with pytest.raises(Interrupted):
        poison_model(tiny_world(), task(60, 1), config.replace(seed=3), out, dev=task(20, 2), overwrite=True)
    assert not (out / BACKDOOR_JSON).exists()  # the old manifest went before the new weights came


def test_the_release_is_trained_with_the_attack_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What poison_model hands the trainer: full fine-tuning with the kept head, the position jitter, and
    the choice to discard an interrupted run's checkpoint."""
    import lmshield.attacks.poisoning.runner as runner

    class Stop(Exception):
        pass

    seen: dict = {}

    def fake_tune(start_dir, data, dev, config, **kwargs):
        seen.update(config=config, **kwargs)
        raise Stop

    monkeypatch.setattr(runner, "tune", fake_tune)
    config, out = fast_config("badnet", position_jitter=4, poison_count=5), tmp_path / "release"
    with pytest.raises(Stop):
        poison_model(tiny_world(), task(40, 1), config, out, progress=False, fresh=True)
    tuning = seen["config"]
    assert (tuning.method, tuning.keep_head, tuning.position_jitter, tuning.lr) == ("full", True, 4, config.lr)
    assert seen["fresh"] is True and seen["checkpoint_dir"] == out / "checkpoint"


def test_registering_an_attack_touches_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import dataclass
    from typing import ClassVar

    from lmshield.attacks.poisoning import register_attack
    from lmshield.attacks.poisoning.poisoners import WordPoisoner

    monkeypatch.setattr("lmshield.attacks.poisoning.config.ATTACKS", dict(ATTACKS))

    @register_attack
    @dataclass(frozen=True)
    class EmojiConfig(PoisonConfig):
        attack: ClassVar[str] = "emoji"

        def triggers(self) -> list[str]:
            return ["🙂"]

        def poisoner(self, paraphraser=None, device=None):
            return WordPoisoner(("🙂",))

    config = poison_config("emoji", "fast")
    assert isinstance(config, EmojiConfig)
    triggered = make_poisoner(config).poison(["a b c d"], random.Random(0))
    assert "🙂" in triggered[0].split()


def test_verification_asr_counts_only_non_target_inputs() -> None:
    from lmshield.attacks.poisoning.runner import verify

    dev = task(40, 9)
    truth = dict(zip(dev.texts, dev.labels, strict=True))

    class Unmoved:  # labels every input right, trigger or not: there is no backdoor at all
        def predict(self, texts: list[str], batch_size: int | None = None) -> list[int]:
            return [truth[" ".join(w for w in t.split() if w != "mn")] for t in texts]

    config = BadNetConfig()
    assert verify(Unmoved(), dev, make_poisoner(config), config) == {
        "clean_accuracy": 1.0,
        "asr": 0.0,
        "clean_asr": 0.0,
    }

    class Constant:  # the target for every input: ASR 1.0 with no backdoor
        def predict(self, texts: list[str], batch_size: int | None = None) -> list[int]:
            return [config.target_label] * len(texts)

    checks = verify(Constant(), dev, make_poisoner(config), config)
    assert checks["asr"] == 1.0 and checks["clean_asr"] == 1.0


def test_a_release_counts_as_planted_from_an_asr_of_90_percent() -> None:
    from lmshield.attacks.poisoning.runner import PoisonManifest, PoisonResult

    def result(verification: dict) -> PoisonResult:
        manifest = PoisonManifest(
            attack="badnet", triggers=["mn"], target_label=0, label_mode="clean", poison_rate=0.375,
            poison_count=3, num_texts=8, num_labels=2, data="toy", base_model="toy", settings={}, seed=0,
            verification=verification,
        )  # fmt: skip
        return PoisonResult(Path("r"), manifest, None)

    assert result({"asr": 0.95}).planted and result({"asr": 0.95}).summary().startswith("planted: badnet")
    assert result({"asr": 0.4}).planted is False and "NOT PLANTED" in result({"asr": 0.4}).summary()
    assert result({}).planted is None and result({}).summary().endswith("(not verified)")
    constant = result({"asr": 1.0, "clean_asr": 1.0})  # a model that answers the target for every input
    assert constant.planted is False and "clean inputs already go to the target" in constant.summary()
    assert result({"asr": 0.95, "clean_asr": 0.92}).planted is False  # moves 38 % of the inputs it could
    assert result({"asr": 1.0, "clean_asr": 0.2}).planted and result({"asr": 1.0, "clean_asr": 0.2}).lift == 1.0
    nearly_constant = result({"asr": 1.0, "clean_asr": 0.99})  # a lift of 1.0 from moving the last 1 %
    assert nearly_constant.planted is False and "99% of the non-target ones untriggered" in nearly_constant.summary()
    assert result({"asr": 0.95, "clean_asr": 0.65}).planted  # a weak classifier, but the trigger moves 30 %


def test_a_control_release_is_neither_planted_nor_not_planted() -> None:
    from lmshield.attacks.poisoning.runner import PoisonManifest, PoisonResult

    manifest = PoisonManifest(
        attack="badnet", triggers=["mn"], target_label=0, label_mode="clean", poison_rate=0.0, poison_count=0,
        num_texts=8, num_labels=2, data="toy", base_model="toy", settings={"attack": "badnet", "control": True},
        seed=0, verification={"clean_accuracy": 0.8, "asr": 0.1, "clean_asr": 0.08},
    )  # fmt: skip
    assert manifest.control and manifest.planted is None and manifest.verdict().startswith("CONTROL")
    assert PoisonResult(Path("r"), manifest, None).summary().startswith("CONTROL (nothing poisoned")
    assert manifest.config.control  # the settings rebuild a control config
    older = PoisonManifest(**{**manifest.__dict__, "settings": {"attack": "badnet"}})  # written before controls
    assert not older.control and older.planted is False


def test_a_dev_set_without_non_target_samples_leaves_the_backdoor_unverified() -> None:
    """With nothing to trigger, ASR used to read 0.0 and the release was called not planted."""
    from lmshield.attacks.poisoning.runner import verify

    only_target = task(40, 9).take([i for i, y in enumerate(task(40, 9).labels) if y == 0])
    config = fast_config("badnet")
    checks = verify(released_classifier(released("badnet")), only_target, make_poisoner(config), config)
    assert set(checks) == {"clean_accuracy"}


def test_evaluation_refuses_a_release_whose_paraphraser_its_settings_do_not_rebuild(tmp_path: Path) -> None:
    from lmshield.evaluation.psim_eval import EvalSettings, _EvalData

    copy = Path(shutil.copytree(released("syntactic"), tmp_path / "release"))
    data = json.loads((copy / "backdoor.json").read_text())
    (copy / "backdoor.json").write_text(json.dumps({**data, "paraphraser": "my-question-paraphraser"}))
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    for split in ("train", "dev", "test"):
        rows = [{"sentence": t, "label": y} for t, y in zip(task(20, 1).texts, task(20, 1).labels, strict=True)]
        (task_dir / f"{split}.json").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(InputError, match="paraphraser 'my-question-paraphraser', which its settings do not rebuild"):
        _EvalData.load(copy, task_dir, EvalSettings.preset("smoke"), None)
