"""Tuning: every method learns a tiny task, round-trips through disk, and reads the right watched token."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from lmshield.errors import InputError, ModelLoadError
from lmshield.models import Encoder
from lmshield.testing import TINY_ARCHITECTURES, tiny_config, tiny_encoder, tiny_tokenizer
from lmshield.tuning import (
    METHODS,
    LabelledData,
    TunedClassifier,
    TuningConfig,
    TuningMethod,
    get_method,
    register_method,
    tune,
)
from lmshield.tuning.heads import ReleasedHead
from lmshield.tuning.methods import PEFT_LR
from tests.tuning.helpers import tiny_task

ALL_METHODS = ("prompt", "ptuning", "prefix", "lora", "full")


def fast(method: str, head: str = "cls", **changes: object) -> TuningConfig:
    lr = 3e-3 if method == "full" else 3e-2
    settings = {"epochs": 5, "batch_size": 16, "max_length": 32, "lr": lr, "encoder_hidden_size": 32, **changes}
    return TuningConfig(method=method, head=head, **settings)


def test_method_defaults_follow_the_papers() -> None:
    lora = TuningConfig(method="lora")
    assert (lora.lr, lora.lora_r, lora.lora_alpha, lora.lora_dropout) == (PEFT_LR, 8, 16, 0.1)
    assert lora.num_virtual_tokens is None
    for method in ("prompt", "ptuning", "prefix"):
        config = TuningConfig(method=method)
        assert (config.lr, config.num_virtual_tokens, config.batch_size) == (2e-3, 5, 32)
    assert TuningConfig(method="ptuning").encoder_hidden_size == 128
    assert TuningConfig(method="full").lr == 2e-5
    assert TuningConfig(method="prefix", lr=0.1).lr == 0.1
    assert TuningConfig.from_dict(TuningConfig(method="lora", lora_targets=("query",)).to_dict()).lora_targets == (
        "query",
    )


def test_replacing_the_method_takes_its_defaults_but_keeps_explicit_settings() -> None:
    prefix = TuningConfig(method="prefix")
    full = prefix.replace(method="full")
    assert (full.lr, full.num_virtual_tokens) == (2e-5, None)
    assert full.replace(method="prompt").lr == 2e-3
    assert TuningConfig(method="prefix", lr=0.1).replace(method="full").lr == 0.1
    assert prefix.replace(method="full", lr=1e-4).lr == 1e-4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "adapterz"}, "unknown tuning method"),
        ({"head": "pooler"}, "unknown head"),
        ({"head": "mask", "template": "{text}"}, "{mask}"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr must be a finite positive number"),
        ({"warmup_ratio": 5}, r"warmup_ratio must be in \[0, 1\)"),
        ({"warmup_ratio": -0.1}, "warmup_ratio"),
        ({"checkpoint": "median"}, "unknown checkpoint"),
        ({"position_jitter": -1}, "position_jitter"),
        ({"method": "prompt", "position_jitter": 4}, "not with virtual tokens"),
        ({"method": "prompt", "prompt_init": "text"}, "prompt_init"),
        ({"method": "prompt", "num_virtual_tokens": 0}, "num_virtual_tokens"),
        ({"max_length": 2}, "max_length must be at least 8 tokens"),
        ({"head_dropout": 5}, r"head_dropout must be in \[0, 1\)"),
        ({"lora_dropout": -0.1}, "lora_dropout"),
        ({"method": "prompt", "num_virtual_tokens": 10**8}, "num_virtual_tokens must be a whole number from 1 to 512"),
        ({"batch_size": 2.5}, "batch_size must be a whole number"),
        ({"lora_targets": ["query", ""]}, "lora_targets must be module names"),
        ({"lora_alpha": float("nan")}, "lora_alpha must be a finite positive number"),
        ({"lora_alpha": 1e308}, "lora_alpha must be at most 65536"),
        ({"max_grad_norm": 0}, "max_grad_norm must be a finite positive number"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"dev_fraction": "x"}, r"dev_fraction must be a number in \(0, 1\), got 'x'"),
        ({"dev_fraction": float("nan")}, "dev_fraction"),
        ({"dev_fraction": True}, "dev_fraction"),
        ({"max_length": "64"}, "max_length must be a whole number"),
        ({"position_jitter": "2"}, "position_jitter must be a whole number"),
        ({"seed": None}, "seed must be a whole number"),
        # a template is formatted with every input: only {text} and {mask}, once each, with no spec or index
        ({"head": "mask", "template": "{text} {mask} {0}"}, "nothing else in braces"),
        ({"head": "mask", "template": "{text:>400000000} {mask}"}, "nothing else in braces"),
        ({"head": "mask", "template": "{text.__class__} {mask}"}, "nothing else in braces"),
        ({"head": "mask", "template": "{text} {mask} {text}"}, "once each"),
        ({"head": "mask", "template": "{text} {mask"}, "not a format string"),
    ],
)
def test_bad_settings_are_one_line_errors(changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        TuningConfig(**changes)


def test_tune_refuses_what_is_not_labelled_data_before_loading_a_model(tmp_path: Path) -> None:
    data = tiny_task(10, 1)
    for train, dev, name in (([("a", 0)], None, "train"), (data, [("a", 0)], "dev"), ({"a": 0}, data, "train")):
        with pytest.raises(InputError, match=f"{name} data must be a LabelledData, got .*LabelledData\\(texts, labels"):
            tune(tmp_path / "no-model", train, dev, progress=False)
    with pytest.raises(InputError, match="config must be a TuningConfig, got dict"):
        tune(tmp_path / "no-model", data, config={"epochs": 1}, progress=False)


def test_a_dev_split_that_leaves_one_label_is_blamed_on_the_data_size(tmp_path: Path) -> None:
    """Two examples, two labels: the automatic hold-out takes one label away, which is not the data's lack."""
    two = tiny_task(20, 1, classes=2)
    two = two.take([two.labels.index(0), two.labels.index(1)])
    with pytest.raises(InputError, match=r"2 training examples are too few to hold out a dev set.*dev="):
        tune(tmp_path / "no-model", two, progress=False)
    one = two.take([0, 0, 0])
    with pytest.raises(InputError, match="the training data holds a single label"):
        tune(tmp_path / "no-model", one, progress=False)


def test_labels_without_a_training_example_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tiny_task(30, 1, classes=2)
    shifted = LabelledData(data.texts, [label + 1 for label in data.labels], ["0", "1", "2"])  # a file labelled 1, 2
    with caplog.at_level("WARNING"), pytest.raises(ModelLoadError):
        tune(tmp_path / "no-model", shifted, progress=False)
    assert "1 of the 3 labels have no training example (0)" in caplog.text


def test_nan_outputs_are_refused_not_passed_on(trained_bert: Encoder) -> None:
    """NaN logits match no PV and beat no PSIM threshold: a classifier giving them must fail, not pass inputs."""
    classifier = TunedClassifier.build(trained_bert, fast("lora", epochs=1), ["a", "b"])
    texts = tiny_task(4, 1).texts
    assert classifier.classify(texts).logits.isfinite().all()
    with torch.no_grad():
        next(classifier.head.parameters()).fill_(float("nan"))
    with pytest.raises(InputError, match="NaN or infinite outputs on 4 of 4 texts"):
        classifier.classify(texts)


def test_an_interrupted_overwrite_leaves_no_classifier_that_loads(
    trained_bert: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saving over an artefact removes its tuning.json first and writes it last: a save stopped half way must
    not leave the old settings beside the new head (or the other way round) for a loader to take as whole."""
    import lmshield.tuning.classifier as module

    lora = TunedClassifier.build(trained_bert, fast("lora", epochs=1), ["a", "b"])
    full = TunedClassifier.build(trained_bert, fast("full", epochs=1), ["a", "b"])
    lora.save_pretrained(tmp_path / "clf")
    assert TunedClassifier.from_pretrained(tmp_path / "clf").config.method == "lora"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "write_marker_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        full.save_pretrained(tmp_path / "clf")
    with pytest.raises(InputError, match="not a tuned classifier"):
        TunedClassifier.from_pretrained(tmp_path / "clf")


def test_a_tune_stopped_before_its_classifier_is_saved_leaves_no_classifier_that_loads(
    trained_bert: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history was written before the classifier's save removed the old tuning.json: stopped between the
    two, the old classifier loaded beside the new run's history."""
    tune(trained_bert, tiny_task(40, 1), tiny_task(20, 2), fast("lora", epochs=1), out_dir=tmp_path, progress=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(TunedClassifier, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune(trained_bert, tiny_task(40, 1), tiny_task(20, 2), fast("lora", epochs=2), out_dir=tmp_path,
             progress=False)  # fmt: skip
    with pytest.raises(InputError, match="not a tuned classifier"):
        TunedClassifier.from_pretrained(tmp_path)


def test_a_classifier_no_better_than_the_commonest_label_is_flagged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="lmshield.tuning"):  # lr 1e-9: it learns nothing
        tune(tiny_encoder("bert"), tiny_task(40, 1), tiny_task(30, 2), fast("lora", epochs=1, lr=1e-9), progress=False)
    assert "no better than always answering the commonest label" in caplog.text


def test_a_tiny_dev_set_is_flagged_when_it_picks_the_best_epoch(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="lmshield.tuning"):
        tune(tiny_encoder("bert"), tiny_task(40, 1), tiny_task(5, 2), fast("lora", epochs=1), progress=False)
    assert "picked on 5 dev examples" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="lmshield.tuning"):
        tune(tiny_encoder("bert"), tiny_task(40, 1), tiny_task(30, 2), fast("lora", epochs=1), progress=False)
    assert "dev examples" not in caplog.text


def test_a_diverging_run_stops_instead_of_saving_nan_weights(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"training diverged in epoch 1 \(loss nan\); lower the learning rate"):
        tune(tiny_encoder("bert"), tiny_task(40, 1), tiny_task(20, 2), fast("lora", epochs=1, lr=1e30),
             out_dir=tmp_path / "clf", progress=False)  # fmt: skip
    assert not (tmp_path / "clf" / "tuning.json").exists()


@pytest.mark.parametrize(("method", "head"), [(m, "cls") for m in ALL_METHODS] + [(m, "mask") for m in ALL_METHODS])
def test_each_method_beats_chance(trained_bert: Encoder, method: str, head: str) -> None:
    result = tune(trained_bert, tiny_task(240, 1), tiny_task(90, 2), fast(method, head), progress=False)
    assert result.dev_accuracy > 0.55  # chance is 1/3
    assert result.history[result.best_epoch - 1].dev_accuracy == result.dev_accuracy
    assert result.classifier.num_labels == 3


def test_position_jitter_moves_positions_in_training_only(trained_bert: Encoder) -> None:
    result = tune(trained_bert, tiny_task(240, 1), tiny_task(90, 2), fast("full", position_jitter=6), progress=False)
    classifier = result.classifier
    assert result.dev_accuracy > 0.55 and classifier.config.position_jitter == 6
    seen: list[dict] = []
    hook = classifier.backbone.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs), with_kwargs=True)
    batch = classifier.encode(tiny_task(64, 3).texts)
    classifier.train()
    classifier(**batch)
    classifier.eval()
    classifier(**batch)
    hook.remove()
    positions = seen[0]["position_ids"]
    shifts = positions[:, 0]
    assert (positions - shifts[:, None] == torch.arange(positions.shape[1])).all()  # contiguous, moved as one
    assert shifts.min() >= 0 and shifts.max() <= 6 and len(set(shifts.tolist())) > 1
    assert "position_ids" not in seen[1]  # inference reads the model's own positions


def test_checkpoint_last_keeps_the_final_epoch_not_the_best(
    trained_bert: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labels without signal (PSIM's random labels): the dev pick would be noise, so the last epoch stays."""
    import lmshield.tuning.trainer as trainer

    def falling_accuracy() -> object:
        scores = iter([0.9, 0.5, 0.1])
        return lambda *args, **kwargs: next(scores)

    heads = {}
    for checkpoint in ("best", "last"):
        monkeypatch.setattr(trainer, "accuracy", falling_accuracy())
        config = fast("prefix", epochs=3, checkpoint=checkpoint)
        result = tune(trained_bert, tiny_task(64, 1), tiny_task(16, 2), config, progress=False)
        heads[checkpoint] = [t.clone() for t in result.classifier.head.state_dict().values()]
        assert (result.best_epoch, result.dev_accuracy) == ((1, 0.9) if checkpoint == "best" else (3, 0.1))
    assert not all(torch.equal(a, b) for a, b in zip(heads["best"], heads["last"], strict=True))


def test_only_the_method_parameters_train(trained_bert: Encoder) -> None:
    for method in ("prompt", "prefix", "lora"):
        classifier = TunedClassifier.build(trained_bert, fast(method), ["a", "b"])
        names = [name for name, p in classifier.named_parameters() if p.requires_grad]
        assert any(name.startswith("head.") for name in names)
        assert all(name.startswith("head.") or "prompt_encoder" in name or "lora_" in name for name in names)
    full = TunedClassifier.build(trained_bert, fast("full"), ["a", "b"])
    assert all(p.requires_grad for p in full.parameters())
    assert not any(p.requires_grad for p in trained_bert.model.parameters())  # the caller's encoder is untouched


@torch.no_grad()
def test_prompt_tuning_starts_from_word_embeddings_unless_asked(trained_bert: Encoder) -> None:
    words = trained_bert.model.get_input_embeddings().weight

    def start(prompt_init: str) -> torch.Tensor:
        classifier = TunedClassifier.build(trained_bert, fast("prompt", prompt_init=prompt_init), ["a", "b"])
        (weight,) = [p for name, p in classifier.named_parameters() if "prompt_encoder" in name]
        return weight

    vocab, random = start("vocab"), start("random")
    assert TuningConfig(method="prompt").prompt_init == "vocab"
    assert all(torch.isclose(words, row).all(dim=1).any() for row in vocab)
    assert not any(torch.isclose(words, row).all(dim=1).any() for row in random)
    assert random.std() > 5 * words.std()  # peft's N(0, 1) draw, far from the embeddings' scale


def test_the_peft_modules_follow_the_settings(trained_bert: Encoder) -> None:
    for method in ("prompt", "ptuning", "prefix"):
        classifier = TunedClassifier.build(trained_bert, fast(method, num_virtual_tokens=3), ["a", "b"])
        assert classifier.backbone.peft_config["default"].num_virtual_tokens == 3
        assert classifier.shift == (0 if method == "prefix" else 3)  # prefix tuning moves no token
    config = fast("lora", lora_r=4, lora_alpha=32, lora_targets=("query",))
    lora = TunedClassifier.build(trained_bert, config, ["a", "b"]).backbone.peft_config["default"]
    assert (lora.r, lora.lora_alpha, set(lora.target_modules)) == (4, 32, {"query"})
    assert [name for name in ALL_METHODS if get_method(name).changes_encoder] == ["lora", "full"]


@pytest.mark.parametrize("head", ["cls", "mask"])
def test_read_lengths_say_where_truncation_cuts_a_text(trained_bert: Encoder, head: str) -> None:
    classifier = TunedClassifier.build(trained_bert, fast("lora", head, max_length=16), ["a", "b"])
    long_text, short = " ".join(["the happy city was warm"] * 20), "the city"
    reach, whole = classifier.read_lengths([long_text, short])
    assert whole == len(short) and 0 < reach < len(long_text)
    assert torch.equal(classifier.encode([long_text])["input_ids"], classifier.encode([long_text[:reach]])["input_ids"])


def test_long_inputs_fit_beside_the_virtual_tokens_and_keep_the_mask(trained_bert: Encoder) -> None:
    positions = trained_bert.model.config.max_position_embeddings
    long_text = " ".join(["the happy city was warm"] * 60)
    prompt = TunedClassifier.build(trained_bert, fast("prompt", max_length=512), ["a", "b"])
    assert prompt.max_tokens == positions - 5
    assert prompt.classify([long_text]).logits.shape == (1, 2)
    assert TunedClassifier.build(trained_bert, fast("lora", max_length=512), ["a", "b"]).max_tokens == positions
    masked = TunedClassifier.build(trained_bert, fast("lora", "mask", max_length=16), ["a", "b"])
    batch = masked.encode([long_text, "short"])
    assert ((batch["input_ids"] == masked.tokenizer.mask_token_id).sum(dim=1) == 1).all()


def _manual_hidden(classifier: TunedClassifier, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The encoder's last hidden states computed without peft's forward, for the prompt methods."""
    peft_model = classifier.backbone
    base = peft_model.get_base_model()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    prompts = peft_model.get_prompt(batch_size=len(ids))
    embeds = torch.cat([prompts, base.get_input_embeddings()(ids)], dim=1)
    full_mask = torch.cat([torch.ones(len(ids), prompts.shape[1], dtype=mask.dtype), mask], dim=1)
    return base(inputs_embeds=embeds, attention_mask=full_mask).last_hidden_state


@pytest.mark.parametrize("head", ["cls", "mask"])
@pytest.mark.parametrize("method", ALL_METHODS)
@torch.no_grad()
def test_watched_output_is_the_real_token(trained_bert: Encoder, method: str, head: str) -> None:
    classifier = TunedClassifier.build(trained_bert, fast(method, head, num_virtual_tokens=4), ["a", "b"]).eval()
    for p in classifier.trainable_parameters():  # move prompts/LoRA away from their neutral initialisation
        p.add_(0.5 * torch.randn_like(p))
    texts = ["the quiet dog slept.", "a teacher wrote a long letter to the council yesterday"]
    batch = classifier.encode(texts)
    out = classifier(**batch)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    token = torch.zeros(len(ids), dtype=torch.long)
    if head == "mask":
        token = (ids == classifier.tokenizer.mask_token_id).int().argmax(dim=1)
        assert bool((token > 0).all())
    rows = torch.arange(len(ids))
    assert torch.allclose(out.logits, classifier.head(out.watched))
    if method in ("prompt", "ptuning"):
        assert classifier.shift == 4
        hidden = _manual_hidden(classifier, batch)
        assert torch.allclose(out.watched, hidden[rows, token + 4], atol=1e-5)
        assert not torch.allclose(out.watched, hidden[rows, token], atol=1e-3)
    else:
        assert classifier.shift == 0
        hidden = classifier.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.allclose(out.watched, hidden[rows, token], atol=1e-5)
        plain = trained_bert.model(input_ids=ids, attention_mask=mask).last_hidden_state[rows, token]
        assert not torch.allclose(out.watched, plain, atol=1e-3)  # deep prompts / LoRA / weights applied


@torch.no_grad()
def test_last_token_models_watch_the_last_real_token() -> None:
    encoder = tiny_encoder("xlnet")
    classifier = TunedClassifier.build(encoder, fast("prompt", num_virtual_tokens=3), ["a", "b"]).eval()
    batch = classifier.encode(["the dog slept", "a teacher wrote a long letter"])
    lengths = batch["attention_mask"].sum(dim=1)
    assert classifier.watched_index(batch["input_ids"], batch["attention_mask"]).tolist() == (lengths - 1 + 3).tolist()
    hidden = _manual_hidden(classifier, batch)
    out = classifier(**batch)
    assert torch.allclose(out.watched, hidden[torch.arange(2), lengths - 1 + 3], atol=1e-5)


def test_lora_targets_another_architecture_names_are_one_line_errors() -> None:
    """BERT's query/value on DistilBERT (q_lin/v_lin) surfaced as peft's own ValueError, not an InputError."""
    with pytest.raises(InputError, match=r"lora_targets \['query', 'value'\] name no module of this distilbert"):
        TunedClassifier.build(tiny_encoder("distilbert"), fast("lora", lora_targets=("query", "value")), ["a", "b"])
    dotted = fast("lora", lora_targets=("attention.q_lin",))
    assert TunedClassifier.build(tiny_encoder("distilbert"), dotted, ["a", "b"]).trainable_parameters()


@torch.no_grad()
def test_a_classifier_on_a_left_padding_tokenizer_reads_the_same_token_in_any_batch() -> None:
    """XLNet's tokenizers pad on the left: a classifier built on one watched a pad token of the shorter inputs."""
    encoder = tiny_encoder("xlnet")
    encoder.tokenizer.padding_side = "left"
    classifier = TunedClassifier.build(encoder, fast("lora"), ["a", "b"]).eval()
    texts = ["the dog slept", "a teacher wrote a long letter to the farmer near the river"]
    assert torch.allclose(classifier.classify(texts).logits[:1], classifier.classify(texts[:1]).logits, atol=1e-5)


def test_prefix_tuning_refuses_encoders_without_past_key_values() -> None:
    with pytest.raises(InputError, match="prefix tuning does not support 'albert'"):
        TunedClassifier.build(tiny_encoder("albert"), fast("prefix"), ["a", "b"])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_save_load_round_trip(trained_bert_dir: Path, tmp_path: Path, method: str) -> None:
    config = fast(method, "mask" if method == "ptuning" else "cls", epochs=1)
    result = tune(trained_bert_dir, tiny_task(64, 1), tiny_task(30, 2), config, out_dir=tmp_path, progress=False)
    assert (tmp_path / "tuning.json").is_file() and (tmp_path / "head.safetensors").is_file()
    weights = tmp_path / ("encoder" if method == "full" else "adapter")
    assert list(weights.glob("*.safetensors")) and not list(tmp_path.rglob("*.bin"))
    loaded = TunedClassifier.from_pretrained(tmp_path)
    texts = tiny_task(20, 3).texts
    before, after = result.classifier.classify(texts), loaded.classify(texts)
    assert torch.allclose(before.logits, after.logits, atol=1e-5)
    assert torch.allclose(before.watched, after.watched, atol=1e-5)
    assert loaded.label_names == result.classifier.label_names
    assert not list(tmp_path.rglob(".*.unfinished")) and (tmp_path / "training.json").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*.safetensors")} == {0o666 & ~umask}
    if method == "lora":  # a set, in hash order unless sorted: the same run must write the same bytes
        modules = json.loads((weights / "adapter_config.json").read_text())["target_modules"]
        assert modules == sorted(modules) and len(modules) >= 2


def test_a_classifier_tuned_on_a_pickle_base_loads_with_the_same_opt_in(trained_bert_dir: Path, tmp_path: Path) -> None:
    base = Path(shutil.copytree(trained_bert_dir, tmp_path / "legacy"))
    torch.save(load_file(base / "model.safetensors"), base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    config = fast("lora", epochs=1)
    result = tune(base, tiny_task(32, 1), tiny_task(16, 2), config, out_dir=tmp_path / "clf", progress=False,
                  allow_pickle=True)  # fmt: skip
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        TunedClassifier.from_pretrained(tmp_path / "clf")
    loaded = TunedClassifier.from_pretrained(tmp_path / "clf", allow_pickle=True)
    texts = tiny_task(10, 3).texts
    assert torch.allclose(result.classifier.classify(texts).logits, loaded.classify(texts).logits, atol=1e-5)


@pytest.fixture(scope="module")
def saved_lora(trained_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("saved") / "lora"
    tune(trained_bert_dir, tiny_task(32, 1), tiny_task(16, 2), fast("lora", epochs=1), out_dir=out, progress=False)
    return out


def _nan_head(directory: Path) -> None:
    head = load_file(directory / "head.safetensors")
    save_file({k: torch.full_like(v, float("nan")) for k, v in head.items()}, directory / "head.safetensors")


def _edit_tuning_json(directory: Path, edit) -> None:
    data = json.loads((directory / "tuning.json").read_text())
    edit(data)
    (directory / "tuning.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "tuning.json").write_bytes(b"\xff\xfe"), "unreadable"),
        (lambda d: _edit_tuning_json(d, lambda j: j.update(config=[])), "unreadable"),
        (lambda d: _edit_tuning_json(d, lambda j: j.update(label_names="xyz")), "label_names must be a list"),
        (lambda d: _edit_tuning_json(d, lambda j: j.update(label_names=["only"])), "2 to 10000 names"),
        (lambda d: _edit_tuning_json(d, lambda j: j.update(label_names=["x"] * 10**5)), "2 to 10000 names"),
        (lambda d: _edit_tuning_json(d, lambda j: j["base"].update(directory=5)), r"base\.directory has the wrong"),
        (lambda d: _edit_tuning_json(d, lambda j: j["base"].update(hidden_size="32")), r"base\.hidden_size"),
        (lambda d: _edit_tuning_json(d, lambda j: j["config"].update(keep_head="no")), "keep_head must be true or"),
        (lambda d: _edit_tuning_json(d, lambda j: j["config"].update(lora_alpha=float("nan"))), "lora_alpha must be"),
        (lambda d: (d / "head.safetensors").write_bytes(b"\x08" + b"\x00" * 15), "corrupted or truncated"),
        (_nan_head, "NaN or infinite"),
        (lambda d: _edit_tuning_json(d, lambda j: j["config"].update(head_dropout=5)), r"tuning.json: head_dropout"),
        (lambda d: _edit_tuning_json(d, lambda j: j["config"].update(lora_targets=["nowhere"])), "build no classifier"),
        (lambda d: _edit_tuning_json(d, lambda j: j.update(format_version=7)), "written by a newer lmshield"),
    ],
)
def test_a_damaged_classifier_is_a_one_line_error(saved_lora: Path, tmp_path: Path, damage, message: str) -> None:
    copy = Path(shutil.copytree(saved_lora, tmp_path / "copy"))
    damage(copy)
    with pytest.raises(InputError, match=message) as caught:
        TunedClassifier.from_pretrained(copy)
    assert "\n" not in str(caught.value)


def test_a_classifiers_own_base_copy_is_never_read_as_pickle(trained_bert: Encoder, tmp_path: Path) -> None:
    """--allow-pickle is for the user's base model; the base/ copy lmshield writes is always safetensors."""
    out = TunedClassifier.build(trained_bert, fast("lora", epochs=1), ["a", "b"]).save_pretrained(tmp_path / "clf")
    weights = out / "base" / "model.safetensors"
    torch.save(load_file(weights), out / "base" / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        TunedClassifier.from_pretrained(out, allow_pickle=True)


def test_batch_size_must_be_positive(saved_lora: Path) -> None:
    with pytest.raises(InputError, match="batch_size must be at least 1"):
        TunedClassifier.from_pretrained(saved_lora).classify(["a text"], batch_size=-1)


def test_in_memory_base_is_saved_beside_the_adapter(trained_bert: Encoder, tmp_path: Path) -> None:
    result = tune(trained_bert, tiny_task(64, 1), tiny_task(30, 2), fast("prefix", epochs=1), out_dir=tmp_path)
    assert (tmp_path / "base" / "model.safetensors").is_file()
    texts = tiny_task(10, 4).texts
    assert torch.allclose(
        result.classifier.classify(texts).logits,
        TunedClassifier.from_pretrained(tmp_path).classify(texts).logits,
        atol=1e-5,
    )


def test_changed_base_weights_are_refused(tmp_path: Path) -> None:
    from lmshield.testing import save_tiny

    base = save_tiny(tiny_encoder("bert"), tmp_path / "base")
    tune(base, tiny_task(40, 1), tiny_task(20, 2), fast("prompt", epochs=1), out_dir=tmp_path / "clf", progress=False)
    save_tiny(tiny_encoder("bert", seed=5), base)
    with pytest.raises(InputError, match="not the base model's weights"):
        TunedClassifier.from_pretrained(tmp_path / "clf")
    with pytest.raises(InputError, match="not a tuned classifier"):
        TunedClassifier.from_pretrained(tmp_path)


def test_a_base_carried_inside_the_classifier_is_checked_too(tmp_path: Path) -> None:
    """Tuned from an in-memory encoder, the classifier saves its base in base/; other weights there are refused."""
    from lmshield.testing import save_tiny

    tune(tiny_encoder("bert"), tiny_task(40, 1), tiny_task(20, 2), fast("prompt", epochs=1), out_dir=tmp_path / "clf",
         progress=False)  # fmt: skip
    recorded = json.loads((tmp_path / "clf" / "tuning.json").read_text())["base"]
    assert recorded["directory"] is None
    assert TunedClassifier.from_pretrained(tmp_path / "clf").base.fingerprint == recorded["fingerprint"]
    save_tiny(tiny_encoder("bert", seed=5), tmp_path / "clf" / "base")
    with pytest.raises(InputError, match="not the base model's weights"):
        TunedClassifier.from_pretrained(tmp_path / "clf")


def test_a_carried_base_is_read_once_and_its_check_can_be_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """base/ is loaded once, checked and built on (never read again); check_base=False takes other weights."""
    import lmshield.tuning.classifier as classifier_module
    from lmshield.testing import save_tiny

    tune(tiny_encoder("bert"), tiny_task(40, 1), tiny_task(20, 2), fast("prompt", epochs=1), out_dir=tmp_path / "clf",
         progress=False)  # fmt: skip
    save_tiny(tiny_encoder("bert", seed=5), tmp_path / "clf" / "base")
    reads, real = [], classifier_module.load_encoder

    def recorded(*args: object, **kwargs: object) -> Encoder:
        reads.append(args[0])
        return real(*args, **kwargs)

    def read_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("base/ read a second time")

    monkeypatch.setattr(classifier_module, "load_encoder", recorded)
    monkeypatch.setattr(classifier_module, "load_pretrained", read_again)
    loaded = TunedClassifier.from_pretrained(tmp_path / "clf", check_base=False)
    assert reads == [str(tmp_path / "clf" / "base")]
    assert loaded.classify(["a text"]).probs.shape == (1, loaded.num_labels)
    with pytest.raises(InputError, match="not the base model's weights"):
        TunedClassifier.from_pretrained(tmp_path / "clf")


def test_a_base_named_by_a_bare_folder_name_is_not_taken_for_a_hub_id_once_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'tune --model pois' names a local folder; moved, it must get the 'give its new place' hint, not a hub
    download of a repository called 'pois'."""
    from lmshield.testing import save_tiny

    save_tiny(tiny_encoder("bert"), tmp_path / "pois")
    monkeypatch.chdir(tmp_path)
    tune("pois", tiny_task(40, 1), tiny_task(20, 2), fast("prompt", epochs=1), out_dir=tmp_path / "clf", progress=False)
    (tmp_path / "pois").rename(tmp_path / "moved")
    with pytest.raises(InputError, match="no longer exists; if it moved, give its new place"):
        TunedClassifier.from_pretrained(tmp_path / "clf")
    assert TunedClassifier.from_pretrained(tmp_path / "clf", base=tmp_path / "moved").label_names


def test_a_moved_base_is_found_where_it_is_said_to_be_and_checked(tmp_path: Path) -> None:
    from lmshield.testing import save_tiny

    base = save_tiny(tiny_encoder("bert"), tmp_path / "base")
    tune(base, tiny_task(40, 1), tiny_task(20, 2), fast("prompt", epochs=1), out_dir=tmp_path / "clf", progress=False)
    texts = tiny_task(8, 3).texts
    before = TunedClassifier.from_pretrained(tmp_path / "clf").classify(texts).probs
    moved = base.rename(tmp_path / "moved")
    with pytest.raises(InputError, match="if it moved, give its new place"):
        TunedClassifier.from_pretrained(tmp_path / "clf")
    after = TunedClassifier.from_pretrained(tmp_path / "clf", base=moved).classify(texts).probs
    assert torch.equal(before, after)
    from typer.testing import CliRunner

    from lmshield.cli.main import app

    (tmp_path / "texts.txt").write_text("\n".join(texts))
    predicted = CliRunner().invoke(
        app, ["predict", str(tmp_path / "clf"), str(tmp_path / "texts.txt"), "--base", str(moved)]
    )
    assert predicted.exit_code == 0 and len(predicted.stdout.splitlines()) == len(texts), predicted.output
    other = save_tiny(tiny_encoder("bert", seed=5), tmp_path / "other")
    with pytest.raises(InputError, match="not the base model's weights"):
        TunedClassifier.from_pretrained(tmp_path / "clf", base=other)


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT saved with a 3-label sequence-classification head, as PSIM's released weights are."""
    encoder = tiny_encoder("bert")
    config = encoder.model.config
    config.num_labels = 3
    torch.manual_seed(3)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    directory = tmp_path_factory.mktemp("released")
    model.save_pretrained(directory)
    encoder.tokenizer.save_pretrained(directory)
    return directory


@torch.no_grad()
def test_kept_head_is_the_released_head(released_dir: Path) -> None:
    classifier = TunedClassifier.build(str(released_dir), fast("lora", keep_head=True), ["a", "b", "c"]).eval()
    assert isinstance(classifier.head, ReleasedHead)
    released = AutoModelForSequenceClassification.from_pretrained(released_dir).to(classifier.device).eval()
    batch = classifier.encode(["the dog slept.", "a quiet city"])
    # LoRA starts as the identity, so the kept head must reproduce the released model exactly
    assert torch.allclose(classifier(**batch).logits, released(**batch).logits, atol=1e-5)
    fresh = TunedClassifier.build(str(released_dir), fast("lora"), ["a", "b"]).eval()  # encoder only, new head
    assert not isinstance(fresh.head, ReleasedHead)
    assert torch.allclose(fresh(**batch).watched, classifier(**batch).watched, atol=1e-5)


@pytest.mark.parametrize(
    ("method", "train_pooler", "trains"),
    [("lora", False, False), ("lora", True, True), ("prompt", False, False), ("full", False, True)],
)
def test_peft_leaves_the_encoders_pooler_frozen_unless_asked(
    released_dir: Path, method: str, train_pooler: bool, trains: bool
) -> None:
    """The kept head reads BERT's pooler, which lives in the encoder: PEFT freezes it (as the reference and peft's
    sequence-classification task do); full fine-tuning trains everything."""
    config = fast(method, keep_head=True, train_pooler=train_pooler)
    classifier = TunedClassifier.build(str(released_dir), config, ["a", "b", "c"])
    pooler = classifier.head.parts["pooler"]
    assert all(p.requires_grad is trains for p in pooler.parameters())
    assert all(p.requires_grad for p in classifier.head.parts["classifier"].parameters())


@pytest.mark.parametrize("model_type", ["bert", "albert", "deberta-v2"])
def test_peft_freezes_the_released_pooler_of_every_architecture(tmp_path: Path, model_type: str) -> None:
    """DeBERTa's pooler sits beside its encoder, not in it, and was trained by PEFT methods unasked (the config
    says it is frozen, as peft's sequence-classification task leaves it)."""
    tokenizer = tiny_tokenizer(model_type)
    AutoModelForSequenceClassification.from_config(tiny_config(model_type, len(tokenizer))).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    for train_pooler in (False, True):
        config = fast("lora", keep_head=True, train_pooler=train_pooler)
        pooler = TunedClassifier.build(str(tmp_path), config, ["a", "b"]).head.parts["pooler"]
        assert all(p.requires_grad is train_pooler for p in pooler.parameters())


def test_kept_head_round_trip_and_label_check(released_dir: Path, tmp_path: Path) -> None:
    config = fast("ptuning", keep_head=True, epochs=1)
    result = tune(str(released_dir), tiny_task(60, 1), tiny_task(30, 2), config, out_dir=tmp_path, progress=False)
    loaded = TunedClassifier.from_pretrained(tmp_path)
    texts = tiny_task(10, 5).texts
    assert torch.allclose(result.classifier.classify(texts).logits, loaded.classify(texts).logits, atol=1e-5)
    with pytest.raises(InputError, match="kept head has 3 labels"):
        tune(str(released_dir), tiny_task(40, 1, classes=2), None, config, progress=False)


def test_registering_a_method_touches_one_place(trained_bert: Encoder) -> None:
    prompt = get_method("prompt")
    register_method(
        TuningMethod(
            "prompt-long", "prompt tuning, 12 tokens", prompt.peft_config, True, {"lr": 0.01, "num_virtual_tokens": 12}
        )
    )
    try:
        config = TuningConfig(method="prompt-long", epochs=1, max_length=32)
        classifier = TunedClassifier.build(trained_bert, config, ["a", "b"])
        assert classifier.shift == 12 and config.lr == 0.01
    finally:
        METHODS.pop("prompt-long")


@pytest.mark.slow
@torch.no_grad()
def test_embedded_minilm_prefix_classifier_reads_cls() -> None:
    from lmshield.models import load_encoder

    encoder = load_encoder(None, device="cpu")
    classifier = TunedClassifier.build(encoder, TuningConfig(method="lora", max_length=32), ["neg", "pos"]).eval()
    batch = classifier.encode(["a gorgeous film", "a dull mess of a movie"])
    expected = encoder.model(**batch).last_hidden_state[:, 0]
    assert torch.allclose(classifier(**batch).watched, expected, atol=1e-4)  # LoRA starts as the identity
    prefix = TunedClassifier.build(encoder, TuningConfig(method="prefix", max_length=32), ["neg", "pos"]).eval()
    assert prefix.classify(["a gorgeous film"]).watched.shape == (1, encoder.hidden_size)


@pytest.mark.parametrize("model_type", TINY_ARCHITECTURES)
@torch.no_grad()
def test_the_released_head_gives_its_model_s_logits_from_the_summary_token(model_type: str) -> None:
    """Fed the hidden state of the token the released head summarises, it gives that model's own logits."""
    tokenizer = tiny_tokenizer(model_type)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type, len(tokenizer))).eval()
    batch = tokenizer(["the dog slept near the river."], return_tensors="pt")
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    hidden = model.base_model(**batch).last_hidden_state
    watched = hidden[:, -1 if model_type == "xlnet" else 0]
    assert torch.allclose(ReleasedHead(model).eval()(watched), model(**batch).logits, atol=1e-5)
