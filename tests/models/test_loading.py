"""Safe loading: every supported architecture, pickle refusal, clear errors."""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmshield.errors import InputError, ModelLoadError
from lmshield.models import Encoder, WatchedPosition, load_encoder, supported_model_types
from lmshield.testing import TINY_ARCHITECTURES, save_tiny, tiny_encoder


@pytest.mark.parametrize("model_type", TINY_ARCHITECTURES)
def test_every_architecture_round_trips_and_embeds(model_type: str, tmp_path: Path):
    directory = save_tiny(tiny_encoder(model_type), tmp_path / model_type)
    encoder = load_encoder(directory, device="cpu")
    assert encoder.model_type == model_type
    ids = encoder.tokenize(["the old dog watched a river", "a city"], 16)
    hidden = encoder.hidden_states(encoder.embed(ids["input_ids"]), ids["attention_mask"])
    assert hidden.shape[-1] == encoder.hidden_size
    if model_type == "albert":
        assert encoder.embedding_size == 16 != encoder.hidden_size
    assert str(encoder.default_position()) == ("last" if model_type == "xlnet" else "cls")
    assert encoder.fingerprint.startswith("sha256:")


def test_trust_remote_code_is_never_set(tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch):
    import transformers

    seen = []
    original = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    load_encoder(tiny_bert_dir)
    assert seen == [False]


class _Exploit:
    """Unpickling this runs os.system: a weights-only loader must refuse it."""

    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))

    marker = ""


def _pickle_model_dir(source: Path, target: Path, payload: object) -> Path:
    shutil.copytree(source, target)
    (target / "model.safetensors").unlink()
    with open(target / "pytorch_model.bin", "wb") as handle:
        pickle.dump(payload, handle)
    return target


def test_pickle_is_refused_without_opt_in(tiny_bert_dir: Path, tmp_path: Path):
    directory = _pickle_model_dir(tiny_bert_dir, tmp_path / "pickled", {"x": torch.zeros(1)})
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_encoder(directory)


def test_malicious_pickle_runs_nothing_even_with_opt_in(tiny_bert_dir: Path, tmp_path: Path):
    _Exploit.marker = str(tmp_path / "pwned")
    directory = _pickle_model_dir(tiny_bert_dir, tmp_path / "evil", _Exploit())
    with pytest.raises(ModelLoadError, match="weights-only") as caught:
        load_encoder(directory, allow_pickle=True)
    assert not (tmp_path / "pwned").exists()
    assert "weights_only=False" not in str(caught.value)  # never the library's advice to turn the guard off


def test_pickle_state_dict_loads_with_opt_in(tiny_bert_dir: Path, tmp_path: Path):
    reference = load_encoder(tiny_bert_dir)
    target = tmp_path / "legacy"
    shutil.copytree(tiny_bert_dir, target)
    (target / "model.safetensors").unlink()
    torch.save(reference.model.state_dict(), target / "pytorch_model.bin")
    # a Trainer's settings beside the weights: an object the weights-only loader refuses, and no weights
    torch.save(argparse.Namespace(learning_rate=1e-5), target / "training_args.bin")
    encoder = load_encoder(target, allow_pickle=True)
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, encoder.model.state_dict()[name]), name
    assert [p.name for p in encoder.weight_files] == ["pytorch_model.bin"]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing", "no such model directory"),
        ("no_weights", "no weights"),
        ("corrupt", "corrupted"),
        ("no_tokenizer", "tokenizer missing"),
        ("unsupported", "unsupported architecture 'gpt2'"),
        ("no_config", "no config.json"),
        ("partial", "lack or misshape 2 of the model's tensors"),
        ("nan_row", "'embeddings.word_embeddings.weight' holds NaN"),
        ("inf_weight", "holds NaN or infinite values"),
        ("layers", "asks for 100000 layers; the weights hold 2"),
        ("quantized", "quantized weights \\(quantization_config\\) refused"),
        ("weights_dir", "model.safetensors: not a regular file"),
        ("index_without_map", "unreadable shard index \\(no 'weight_map'\\)"),
    ],
)
def test_bad_model_directories_fail_with_one_clear_line(
    breakage: str, message: str, tiny_bert_dir: Path, tmp_path: Path
):
    target = tmp_path / "broken"
    if breakage != "missing":
        shutil.copytree(tiny_bert_dir, target)
    if breakage == "no_weights":
        (target / "model.safetensors").unlink()
    elif breakage == "corrupt":
        data = (target / "model.safetensors").read_bytes()
        (target / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif breakage == "no_tokenizer":
        (target / "tokenizer.json").unlink()
    elif breakage == "unsupported":
        config = (target / "config.json").read_text().replace('"model_type": "bert"', '"model_type": "gpt2"')
        (target / "config.json").write_text(config)
    elif breakage == "no_config":
        (target / "config.json").unlink()
    elif breakage == "partial":  # two encoder tensors gone: they must not be filled with random values
        weights = load_file(target / "model.safetensors")
        dropped = [k for k in weights if "layer.0.attention" in k][:2]
        save_file({k: v for k, v in weights.items() if k not in dropped}, target / "model.safetensors")
    elif breakage in ("nan_row", "inf_weight"):  # one [MASK]-like row no clean input uses; one query weight
        weights = load_file(target / "model.safetensors")
        name = (
            "embeddings.word_embeddings.weight"
            if breakage == "nan_row"
            else "encoder.layer.1.attention.self.query.weight"
        )
        weights[name][3 if breakage == "nan_row" else 0, 0] = math.nan if breakage == "nan_row" else math.inf
        save_file(weights, target / "model.safetensors")
    elif breakage == "layers":  # would take minutes and gigabytes to build before the weights are compared
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 100_000}))
    elif breakage == "quantized":  # on a GPU, fp8 and mxfp4 fetch compiled kernels from the hub when they can
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "fp8"}}))
    elif breakage == "weights_dir":
        (target / "model.safetensors").unlink()
        (target / "model.safetensors").mkdir()
    elif breakage == "index_without_map":
        (target / "model.safetensors").rename(target / "shard.safetensors")
        (target / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ModelLoadError, match=message) as info:
        load_encoder(target)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def tiny_albert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tiny_encoder("albert"), tmp_path_factory.mktemp("tiny-albert"))


@pytest.mark.parametrize(
    ("model_type", "edit", "message"),
    [
        ("albert", {"num_hidden_groups": 2000}, "asks for 2000 layer groups; the weights hold 1"),
        ("albert", {"inner_group_num": 2000}, "asks for 2000 layers per group; the weights hold 1"),
        ("albert", {"num_hidden_layers": 100_000}, "100000 layers of shared weights; lmshield runs at most 128"),
        ("bert", {"num_hidden_layers": 2000}, "asks for 2000 layers; the weights hold 0"),
    ],
)
def test_configs_asking_for_layers_no_weights_hold_are_refused_before_building(
    model_type: str, edit: dict, message: str, tiny_bert_dir: Path, tiny_albert_dir: Path, tmp_path: Path
):
    """ALBERT's layer names escaped the layer check: 200,000 groups (or layers per group) in config.json took
    2 minutes and 5 GB to fail, and 100,000 passes through its shared layers hung the scan; a BERT whose
    weights hold no layers at all was not checked either."""
    target = shutil.copytree(tiny_albert_dir if model_type == "albert" else tiny_bert_dir, tmp_path / "model")
    if model_type == "bert":
        weights = load_file(target / "model.safetensors")
        save_file({k: v for k, v in weights.items() if ".layer." not in k}, target / "model.safetensors")
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ModelLoadError, match=message):
        load_encoder(target)


def test_a_pickle_checkpoint_is_held_to_the_layer_count_too(tiny_bert_dir: Path, tmp_path: Path):
    """With --allow-pickle the layer check was skipped: 20,000 layers of a tiny BERT took 50 s and 2.3 GB to be
    refused as missing tensors (a real hidden size: hundreds of gigabytes)."""
    target = tmp_path / "pickled"
    shutil.copytree(tiny_bert_dir, target)
    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 500}))
    with pytest.raises(ModelLoadError, match="asks for 500 layers; the weights hold 2"):
        load_encoder(target, allow_pickle=True)


def test_a_t5_is_counted_by_its_blocks_not_their_parts(tmp_path: Path):
    """T5 names its layers encoder.block.N.layer.M, M its 2 or 3 parts: every T5 paraphraser of more than 3 layers
    (t5-small has 6) was refused as asking for more layers than its weights hold."""
    from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

    from lmshield.models.loading import load_pretrained
    from lmshield.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer("bert")
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_ff=32, d_kv=8, num_heads=2, num_layers=4)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    loaded = load_pretrained(tmp_path / "t5", AutoModelForSeq2SeqLM, check_architecture=False)
    assert loaded.model.config.num_layers == 4
    (tmp_path / "t5" / "config.json").write_text(json.dumps({**config.to_dict(), "num_layers": 5}))
    with pytest.raises(ModelLoadError, match="asks for 5 layers; the weights hold 4"):
        load_pretrained(tmp_path / "t5", AutoModelForSeq2SeqLM, check_architecture=False)


def test_supported_list_names_the_required_architectures():
    assert set(TINY_ARCHITECTURES) <= set(supported_model_types())


@pytest.mark.parametrize(("spec", "expected"), [("cls", [0, 0]), ("last", [4, 2]), ("mask", [2, 1]), (1, [1, 1])])
def test_watched_position_locates_tokens(spec, expected):
    ids = torch.tensor([[2, 7, 4, 8, 3], [2, 4, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    position = WatchedPosition.parse(spec)
    assert position.locate(ids, mask, mask_token_id=4).tolist() == expected


def test_watched_positions_that_do_not_exist_are_refused():
    ids = torch.tensor([[2, 7, 4, 8, 3], [2, 4, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert WatchedPosition.parse("2").locate(ids, mask).tolist() == [2, 2]  # the last token of the short row
    with pytest.raises(InputError, match="beyond the end"):
        WatchedPosition.parse(3).locate(ids, mask)  # the short row has tokens 0..2
    for spec in ("-1", -2):
        with pytest.raises(InputError, match=">= 0"):
            WatchedPosition.parse(spec)
    with pytest.raises(InputError, match="carry no mask token"):
        WatchedPosition.parse("mask").locate(ids, mask, mask_token_id=7)  # only the first row holds a 7
    with pytest.raises(InputError, match="unknown position"):
        WatchedPosition.parse("first")
    assert str(WatchedPosition.parse(None, default="last")) == "last" and str(WatchedPosition.parse("auto")) == "cls"


def test_tokenize_gives_word_ids_with_minus_one_for_special_and_pad_tokens():
    encoder = tiny_encoder("bert")
    batch = encoder.tokenize(["the dog slept", "a quiet old city near the river"], max_length=16)
    special = set(encoder.tokenizer.all_special_ids)
    expected = torch.tensor([[i in special for i in row] for row in batch["input_ids"].tolist()])
    assert torch.equal(batch["word_ids"] == -1, expected)
    assert batch["word_ids"][0, 1:4].tolist() == [0, 1, 2] and int(batch["attention_mask"][0].sum()) == 5


def test_watched_outputs_keep_the_order_of_the_texts():
    encoder = tiny_encoder("bert")
    texts = ["the dog slept", "a quiet old city near the river", "my friend", "the bird sang"]
    last = WatchedPosition.parse("last")
    together = encoder.watched_outputs(texts, last, batch_size=3)
    one_by_one = torch.cat([encoder.watched_outputs([text], last) for text in texts])
    assert not torch.allclose(one_by_one[0], one_by_one[1], atol=1e-4)  # the texts are told apart
    assert torch.allclose(together, one_by_one, atol=1e-5)
    assert encoder.watched_outputs([], last).shape == (0, encoder.hidden_size)


def test_embedded_default_model_loads():
    encoder = load_encoder()
    assert encoder.model_type == "bert" and encoder.hidden_size == 384


def test_only_the_files_transformers_reads_are_weights(tiny_bert_dir: Path, tmp_path: Path):
    target = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    fingerprint = load_encoder(target).fingerprint
    save_file({"pvs": torch.zeros(1, 4)}, target / "pvs.safetensors")  # a scan written into the model folder
    loaded = load_encoder(target)
    assert [p.name for p in loaded.weight_files] == ["model.safetensors"] and loaded.fingerprint == fingerprint
    (target / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../outside.safetensors"}}')
    assert load_encoder(target).fingerprint == fingerprint  # transformers reads model.safetensors first
    (target / "model.safetensors").rename(tmp_path / "outside.safetensors")
    with pytest.raises(ModelLoadError, match="not a file of the model directory"):
        load_encoder(target)
    config = json.loads((tiny_bert_dir / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "transformers_weights": "other.safetensors"}))
    with pytest.raises(ModelLoadError, match="transformers_weights"):
        load_encoder(target)


def test_encoder_round_trips_through_save_and_from_pretrained(tiny_bert_dir: Path, tmp_path: Path):
    encoder = Encoder.from_pretrained(tiny_bert_dir)
    again = Encoder.from_pretrained(encoder.save_pretrained(tmp_path / "copy"))
    assert again.fingerprint == encoder.fingerprint


@pytest.mark.parametrize("model_type", TINY_ARCHITECTURES)
def test_a_base_encoder_loads_under_a_new_task_or_mlm_head(model_type: str, tmp_path: Path):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    from lmshield.models.loading import load_pretrained

    encoder = tiny_encoder(model_type)
    saved = encoder.model.get_input_embeddings().weight
    directory = save_tiny(encoder, tmp_path / model_type)
    heads = [AutoModelForSequenceClassification] + ([AutoModelForMaskedLM] if model_type != "xlnet" else [])
    for head in heads:  # XLNet has no masked-LM class
        loaded = load_pretrained(directory, head)
        assert torch.equal(loaded.model.get_input_embeddings().weight, saved), head.__name__  # not re-initialised


def test_a_peft_adapter_beside_the_weights_is_never_loaded(tiny_bert_dir: Path, tmp_path: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    target = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    plain = load_encoder(target)
    lora = LoraConfig(target_modules=["query"], init_lora_weights=False)
    adapted = get_peft_model(AutoModel.from_pretrained(target), lora)
    adapted.save_pretrained(target)  # adapter_config.json + adapter_model.safetensors, weights nobody checked
    encoder = load_encoder(target)
    assert not any("lora" in name for name, _ in encoder.model.named_parameters())
    cls = WatchedPosition.parse("cls")
    assert torch.equal(encoder.watched_outputs(["a b c"], cls), plain.watched_outputs(["a b c"], cls))
    (target / "model.safetensors").unlink()  # the adapter alone does not make a model
    with pytest.raises(ModelLoadError, match=r"no model\.safetensors"):
        load_encoder(target)


def test_an_attention_implementation_from_the_hub_is_refused(tiny_bert_dir: Path, tmp_path: Path):
    target = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    config = json.loads((tiny_bert_dir / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "attn_implementation": "kernels-community/flash-attn"}))
    with pytest.raises(ModelLoadError, match="attention implementation 'kernels-community/flash-attn' refused"):
        load_encoder(target)
    (target / "config.json").write_text(json.dumps({**config, "attn_implementation": "eager"}))
    assert load_encoder(target).model.config._attn_implementation == "eager"


def test_the_fingerprint_changes_with_the_config_and_the_vocabulary(tiny_bert_dir: Path, tmp_path: Path):
    target = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    fingerprints = {load_encoder(target).fingerprint}
    config = json.loads((tiny_bert_dir / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    fingerprints.add(load_encoder(target).fingerprint)
    vocabulary = json.loads((target / "tokenizer.json").read_text())
    first, second = list(vocabulary["model"]["vocab"])[-2:]  # two ordinary tokens trade ids: another model
    vocab = vocabulary["model"]["vocab"]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (target / "tokenizer.json").write_text(json.dumps(vocabulary))
    fingerprints.add(load_encoder(target).fingerprint)
    assert len(fingerprints) == 3


def test_half_precision_weights_load_as_float32(tiny_bert_dir: Path, tmp_path: Path):
    """fp16 checkpoints met fp32 heads in tuning (a dtype error) or overflowed to a NaN loss."""
    from lmshield.tuning import TunedClassifier, TuningConfig

    half = load_encoder(tiny_bert_dir)
    half.model.half()
    target = half.save_pretrained(tmp_path / "half")
    assert load_file(target / "model.safetensors")["embeddings.word_embeddings.weight"].dtype == torch.float16
    encoder = load_encoder(target)
    assert {p.dtype for p in encoder.model.parameters()} == {torch.float32}
    config = TuningConfig(method="lora", epochs=1, max_length=16, lr=1e-3)
    assert TunedClassifier.build(str(target), config, ["a", "b"]).classify(["a b"]).logits.isfinite().all()


def test_an_in_memory_bfloat16_encoder_has_a_fingerprint():
    encoder = tiny_encoder("bert")
    before = encoder.tensor_fingerprint()
    encoder.model.to(torch.bfloat16)
    assert encoder.tensor_fingerprint() not in ("", before)  # numpy has no bfloat16: hashed as raw bytes


def test_watched_outputs_ignore_dropout_and_keep_the_callers_mode():
    encoder = tiny_encoder("bert")
    expected = encoder.watched_outputs(["the old dog watched a river"], WatchedPosition.parse("cls"))
    encoder.model.train()
    torch.manual_seed(1)
    outputs = [encoder.watched_outputs(["the old dog watched a river"], WatchedPosition.parse("cls")) for _ in "ab"]
    assert torch.equal(outputs[0], expected) and torch.equal(outputs[1], expected)
    assert encoder.model.training
