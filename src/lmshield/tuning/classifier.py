"""TunedClassifier: a (possibly peft-wrapped) encoder plus a head on one watched hidden state.

One forward pass gives both the logits and the watched output (the encoder's state at [CLS], or at the
mask token for the prompt-based head, with the method's prompts applied as the model really runs).
Prompt tuning and P-tuning prepend their virtual tokens to the input embeddings, so every real token
moves right by ``num_virtual_tokens``; prefix tuning passes deep prompts as ``past_key_values`` and LoRA
and full fine-tuning change weights, so nothing moves.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel

from lmshield.devices import resolve_device
from lmshield.errors import InputError
from lmshield.files import readable_as_umask
from lmshield.jsonio import check_format_version, unmark, write_marker_json
from lmshield.models.encoder import POSITION_OFFSET, Encoder
from lmshield.models.loading import load_encoder, load_pretrained, looks_like_path, read_tensors
from lmshield.models.positions import WatchedPosition
from lmshield.text.inputs import as_texts
from lmshield.tuning.config import TuningConfig
from lmshield.tuning.data import MAX_CLASSES
from lmshield.tuning.heads import LinearHead, ReleasedHead
from lmshield.tuning.methods import TuningMethod, get_method

logger = logging.getLogger(__name__)
# peft still calls these transformers APIs; the deprecation notes are not actionable for our users
warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated.*", category=FutureWarning)

TUNING_JSON = "tuning.json"
HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"
ENCODER_DIR = "encoder"
BASE_DIR = "base"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BaseModelInfo:
    """Where the frozen starting weights come from, and their fingerprint."""

    source: str | None  # as given (path or hub id); None for an in-memory encoder
    directory: str | None  # resolved local directory; None for an in-memory encoder
    model_type: str
    fingerprint: str
    hidden_size: int

    def __post_init__(self) -> None:  # read back from a tuning.json that may have been edited
        wrong = [
            name
            for name, value, kinds in (
                ("source", self.source, (str, type(None))),
                ("directory", self.directory, (str, type(None))),
                ("model_type", self.model_type, (str,)),
                ("fingerprint", self.fingerprint, (str,)),
            )
            if not isinstance(value, kinds)
        ]
        if isinstance(self.hidden_size, bool) or not isinstance(self.hidden_size, int) or self.hidden_size < 1:
            wrong.append("hidden_size")
        if wrong:
            raise InputError(f"base.{wrong[0]} has the wrong type or value ({getattr(self, wrong[0])!r})")


@dataclass
class ClassifierOutput:
    """Logits and the watched hidden state of the same forward pass."""

    logits: torch.Tensor  # (N, num_labels)
    watched: torch.Tensor  # (N, hidden)

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits.float(), dim=-1)

    @property
    def labels(self) -> torch.Tensor:
        return self.logits.argmax(dim=-1)


def by_length(texts: list[str]) -> list[int]:
    """The indices of ``texts``, shortest first (ties in input order): the order :meth:`TunedClassifier.classify`
    batches them in, its outputs put back in input order."""
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


class TunedClassifier(nn.Module):
    """A text classifier tuned with one of the registered methods on a frozen (or fine-tuned) encoder."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        tokenizer: Any,
        config: TuningConfig,
        label_names: list[str],
        base: BaseModelInfo,
        base_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.tokenizer = tokenizer
        self.config = config
        self.label_names = list(label_names)
        self.base = base
        # kept (unregistered, untouched) so that an in-memory base can be saved beside the adapter
        object.__setattr__(self, "_base_model", base_model)
        position = "mask" if config.head == "mask" else _summary_position(base.model_type)
        self.position = WatchedPosition.parse(position)
        if config.head == "mask" and tokenizer.mask_token is None:
            raise InputError("the mask head needs a tokenizer with a mask token")

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        model: Encoder | str | Path | None,
        config: TuningConfig,
        label_names: list[str],
        *,
        device: str | torch.device | None = None,
        allow_pickle: bool = False,
        inference: bool = False,
    ) -> TunedClassifier:
        """A fresh classifier (untrained head and prompts) on ``model``: an Encoder, a path or a hub id.

        ``inference`` builds peft modules in inference mode, as saved adapters are loaded (P-tuning then
        reads its saved prompt table directly instead of re-running its prompt encoder).
        """
        method = get_method(config.method)
        encoder_model, tokenizer, base, seq_model = _load_base(model, config, len(label_names), device, allow_pickle)
        method.check(base.model_type)
        torch.manual_seed(config.seed)
        if seq_model is not None:
            head: nn.Module = ReleasedHead(seq_model)
        else:
            head = LinearHead(base.hidden_size, len(label_names), config.head_dropout)
        backbone = method.wrap(encoder_model, config, inference=inference)
        head.requires_grad_(not inference)
        if isinstance(head, ReleasedHead) and method.is_peft and not config.train_pooler:
            head.freeze_pooler()  # frozen with the encoder, as peft does
        keep = model.model if isinstance(model, Encoder) and model.directory is None else None
        classifier = cls(backbone, head, tokenizer, config, label_names, base, base_model=keep)
        return classifier.to(resolve_device(device) if device is not None else _device_of(encoder_model)).eval()

    @property
    def method(self) -> TuningMethod:
        return get_method(self.config.method)

    @property
    def shift(self) -> int:
        """How far the real tokens sit to the right of their input index in the encoder's sequence."""
        return self.method.shift(self.config)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def hidden_size(self) -> int:
        return self.base.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def max_tokens(self) -> int:
        """Longest tokenised input: the configured length, capped so virtual tokens still fit."""
        model_config = _model_of(self.backbone).config
        positions = getattr(model_config, "max_position_embeddings", None)
        if not positions or positions < 0:
            return self.config.max_length
        prompts = int(self.config.num_virtual_tokens or 0) if self.method.uses_virtual_tokens else 0
        room = positions - POSITION_OFFSET.get(self.base.model_type, 0) - prompts
        return max(4, min(self.config.max_length, room))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- inputs and the forward pass -------------------------------------------------------------------------

    def format_texts(self, texts: list[str]) -> list[str]:
        """Apply the mask template (truncating the text so the mask token always survives)."""
        if self.config.head != "mask":
            return list(texts)
        mask = self.tokenizer.mask_token
        pieces = self.tokenizer(
            list(texts),
            add_special_tokens=False,
            truncation=True,
            max_length=self._text_budget(),
            return_offsets_mapping=True,
        )
        cut = [
            text[: offsets[-1][1]] if offsets else ""
            for text, offsets in zip(texts, pieces["offset_mapping"], strict=True)
        ]
        return [self.config.template.format(text=text, mask=mask) for text in cut]

    def _text_budget(self) -> int:
        """Tokens left for the text inside the mask template."""
        overhead = len(
            self.tokenizer(self.config.template.format(text="", mask=self.tokenizer.mask_token))["input_ids"]
        )
        return max(1, self.max_tokens - overhead)

    def read_lengths(self, texts: list[str]) -> list[int]:
        """How many leading characters of each text the classifier reads; truncation cuts the rest (the whole
        text where the tokenizer cannot map tokens back to characters)."""
        texts = list(texts)
        if not getattr(self.tokenizer, "is_fast", False):
            return [len(text) for text in texts]
        mask = self.config.head == "mask"
        pieces = self.tokenizer(
            texts,
            add_special_tokens=not mask,
            truncation=True,
            max_length=self._text_budget() if mask else self.max_tokens,
            return_offsets_mapping=True,
        )
        return [max((end for _, end in offsets), default=0) for offsets in pieces["offset_mapping"]]

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenised, right-padded batch on the classifier's device (whatever side the tokenizer pads)."""
        batch = self.tokenizer(
            self.format_texts(texts),
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
            padding_side="right",
        )
        return {
            "input_ids": batch["input_ids"].to(self.device),
            "attention_mask": batch["attention_mask"].to(self.device),
        }

    def watched_index(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Index of the watched token in the encoder's output sequence (virtual tokens included)."""
        return self.position.locate(input_ids, attention_mask, self.tokenizer.mask_token_id) + self.shift

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ClassifierOutput:
        extra = (
            {"position_ids": self.jittered_positions(input_ids)}
            if self.training and self.config.position_jitter
            else {}
        )
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        index = self.watched_index(input_ids, attention_mask)
        watched = hidden[torch.arange(len(index), device=hidden.device), index]
        return ClassifierOutput(logits=self.head(watched), watched=watched)

    def jittered_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Position ids moved right by a random 0..``position_jitter`` per input (within the table)."""
        rows, length = input_ids.shape
        start = POSITION_OFFSET.get(self.base.model_type, 0)
        table = getattr(_model_of(self.backbone).config, "max_position_embeddings", None) or start + length
        room = max(0, min(self.config.position_jitter, table - start - length))
        shifts = torch.randint(0, room + 1, (rows, 1), device=input_ids.device)
        return start + shifts + torch.arange(length, device=input_ids.device)[None]

    @torch.no_grad()
    def classify(self, texts: list[str], batch_size: int | None = None, progress: bool = False) -> ClassifierOutput:
        """Logits and watched outputs for ``texts`` (eval mode, batched), on the CPU."""
        self.eval()
        texts = as_texts(texts)
        size = self.config.eval_batch_size if batch_size is None else batch_size
        if size < 1:
            raise InputError(f"batch_size must be at least 1, got {size}")
        # one buffer each, filled batch by batch: small per-batch tensors kept among the freed activations
        # fragment the heap, and the process grew by hundreds of MB on tens of thousands of texts
        result = ClassifierOutput(torch.empty(len(texts), self.num_labels), torch.empty(len(texts), self.hidden_size))
        order = by_length(texts)  # batches of similar lengths pad little: about 1.5x faster on SST-2 with MiniLM
        for start in tqdm(range(0, len(texts), size), desc="classifying", disable=not progress, unit="batch"):
            rows = order[start : start + size]
            out = self(**self.encode([texts[i] for i in rows]))
            result.logits[rows] = out.logits.float().cpu()
            result.watched[rows] = out.watched.float().cpu()
        broken = ~(result.logits.isfinite().all(dim=1) & result.watched.isfinite().all(dim=1))
        if bool(broken.any()):  # NaN matches no PV and beats no threshold: it would pass every check
            raise InputError(
                f"the classifier gives NaN or infinite outputs on {int(broken.sum())} of {len(texts)} texts "
                f"(first: {texts[int(broken.nonzero()[0])]!r}); its weights or settings are broken"
            )
        return result

    def predict(self, texts: list[str], batch_size: int | None = None) -> list[int]:
        return self.classify(texts, batch_size).labels.tolist()

    # -- artefacts --------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``tuning.json``, ``head.safetensors`` and the adapter (peft) or the tuned encoder (full)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        unmark(out / TUNING_JSON)
        base = self.base
        if base.directory is None:
            if self._base_model is None:
                raise InputError("the base encoder has no directory and was not kept in memory")
            Encoder(self._base_model, self.tokenizer, "in-memory").save_pretrained(out / BASE_DIR)
        if self.method.is_peft:
            self.backbone.save_pretrained(str(out / ADAPTER_DIR), safe_serialization=True)
            _sort_target_modules(out / ADAPTER_DIR / "adapter_config.json")
        else:
            self.backbone.save_pretrained(out / ENCODER_DIR, safe_serialization=True)
            self.tokenizer.save_pretrained(out / ENCODER_DIR)
        save_file(_contiguous(self.head.state_dict()), str(out / HEAD_FILE), metadata={"format": "lmshield-head"})
        payload = {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "label_names": self.label_names,
            "base": asdict(base),
            "watched_position": str(self.position),
            "shift": self.shift,
        }
        readable_as_umask(out)
        write_marker_json(out / TUNING_JSON, payload)
        return out

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        device: str | torch.device | None = None,
        check_base: bool = True,
        base: str | Path | None = None,
        allow_pickle: bool = False,
    ) -> TunedClassifier:
        """Load a classifier written by :meth:`save_pretrained` (safetensors only, no remote code).

        ``base``: where the base model lives now, when it moved since tuning (its weights must match the
        recorded fingerprint). ``allow_pickle``: the base model holds pickle weights only, as when it was
        tuned with ``allow_pickle=True`` (loaded with ``weights_only=True``; the classifier's own weights are
        always safetensors).
        """
        out = Path(directory)
        if not (out / TUNING_JSON).is_file() or not (out / HEAD_FILE).is_file():
            raise InputError(f"{directory}: not a tuned classifier (expected {TUNING_JSON} and {HEAD_FILE})")
        try:
            payload = json.loads((out / TUNING_JSON).read_text(encoding="utf-8"))
            check_format_version(payload, FORMAT_VERSION, out / TUNING_JSON)
            config = TuningConfig.from_dict(payload["config"])
            base_info = BaseModelInfo(**payload["base"])
            label_names = payload["label_names"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{out / TUNING_JSON}: unreadable ({type(exc).__name__}: {exc})") from exc
        except InputError as exc:  # a setting out of range: say which file holds it
            raise InputError(f"{out / TUNING_JSON}: {exc}") from exc
        if (
            not isinstance(label_names, list)
            or not 2 <= len(label_names) <= MAX_CLASSES
            or not all(isinstance(n, str) for n in label_names)
        ):
            raise InputError(f"{out / TUNING_JSON}: label_names must be a list of 2 to {MAX_CLASSES} names")
        source = _base_location(out, base_info, moved_to=base)
        in_memory = base_info.directory is None  # tuned from an in-memory encoder, whose copy is in BASE_DIR
        start: Encoder | str = source
        if in_memory:  # loaded once: its tensors are checked, then built on; lmshield wrote it, as safetensors
            start = load_encoder(source, device=device)
            if check_base:
                _check_base(source, start.tensor_fingerprint(), base_info)
        try:
            classifier = cls.build(start, config, label_names, device=device, allow_pickle=allow_pickle, inference=True)
        except (ValueError, TypeError, KeyError, IndexError) as exc:  # settings peft or torch cannot build
            raise InputError(
                f"{out / TUNING_JSON}: settings that build no classifier ({type(exc).__name__}: {exc})"
            ) from exc
        except InputError as exc:  # settings lmshield refuses for this base (LoRA targets it lacks, say)
            raise InputError(f"{out / TUNING_JSON}: settings that build no classifier ({exc})") from exc
        if check_base and not in_memory:
            _check_base(source, classifier.base.fingerprint, base_info)
        if base is None:  # keep the record (what a scan of the base is matched with); a moved base keeps its place
            classifier.base = base_info
        classifier._load_weights(out)
        return classifier.eval()

    def _load_weights(self, out: Path) -> None:
        if self.method.is_peft:
            file = out / ADAPTER_DIR / "adapter_model.safetensors"
            if not file.is_file():
                raise InputError(f"{out}: adapter weights missing (expected {file.relative_to(out)})")
            _load_adapter(self.backbone, read_tensors(file, self.device), file)
        else:
            file = out / ENCODER_DIR / "model.safetensors"
            if not file.is_file():
                raise InputError(f"{out}: tuned encoder weights missing (expected {file.relative_to(out)})")
            _load_state(self.backbone, read_tensors(file, self.device), file)
        _load_state(self.head, read_tensors(out / HEAD_FILE, self.device), out / HEAD_FILE)


# -- helpers ------------------------------------------------------------------------------------------------------


def _summary_position(model_type: str) -> str:
    from lmshield.models.architectures import get_architecture

    arch = get_architecture(model_type)
    return arch.default_position if arch else "cls"


def _load_base(
    model: Encoder | str | Path | None,
    config: TuningConfig,
    num_labels: int,
    device: str | torch.device | None,
    allow_pickle: bool,
) -> tuple[PreTrainedModel, Any, BaseModelInfo, PreTrainedModel | None]:
    """(encoder module, tokenizer, base info, sequence-classification model when its head is kept)."""
    if isinstance(model, Encoder):
        if config.keep_head:
            raise InputError("keep_head needs a model directory or hub id saved with a classification head")
        info = BaseModelInfo(
            source=model.source if model.directory else None,
            directory=str(model.directory) if model.directory else None,
            model_type=model.model_type,
            fingerprint=model.fingerprint,
            hidden_size=model.hidden_size,
        )
        return copy.deepcopy(model.model), model.tokenizer, info, None
    auto_class = AutoModelForSequenceClassification if config.keep_head else AutoModel
    loaded = load_pretrained(model, auto_class, device=device, allow_pickle=allow_pickle)
    seq_model = loaded.model if config.keep_head else None
    if seq_model is not None and seq_model.config.num_labels != num_labels:
        raise InputError(
            f"the kept head has {seq_model.config.num_labels} labels but the data has {num_labels}; "
            "drop keep_head or use matching data"
        )
    encoder_model = seq_model.base_model if seq_model is not None else loaded.model
    handle = Encoder(encoder_model, loaded.tokenizer, str(model), loaded.directory, loaded.weight_files)
    info = BaseModelInfo(
        source=None if model is None else str(model),
        directory=str(loaded.directory.resolve()),
        model_type=handle.model_type,
        fingerprint=handle.fingerprint,
        hidden_size=handle.hidden_size,
    )
    return encoder_model, loaded.tokenizer, info, seq_model


def _in_hub_cache(directory: str) -> bool:
    """Whether a recorded base directory was a Hugging Face cache snapshot (a bare name that was not is a local
    folder given by name, such as ``--model pois``, which the hub must not be asked for)."""
    parts = Path(directory).parts
    return "snapshots" in parts and any(part.startswith("models--") for part in parts)


class BaseMismatchError(InputError):
    """The weights given as a saved classifier's base are not the ones it was tuned from."""


def _check_base(source: str, fingerprint: str, recorded: BaseModelInfo) -> None:
    if fingerprint != recorded.fingerprint:
        raise BaseMismatchError(f"{source}: not the base model's weights the classifier was tuned from")


def _base_location(out: Path, base: BaseModelInfo, moved_to: str | Path | None = None) -> str:
    if base.directory is None:
        if moved_to is not None:
            raise InputError(f"{out}: the classifier carries its own encoder; a moved base does not apply")
        return str(out / BASE_DIR)
    if moved_to is not None:
        return str(moved_to)
    if Path(base.directory).is_dir():
        return base.directory
    if base.source is not None and not looks_like_path(base.source) and _in_hub_cache(base.directory):
        return base.source  # a hub id: loaded again from the hub (or its cache)
    raise InputError(
        f"{out}: the base model directory {base.directory} no longer exists; if it moved, give its new place "
        "(--base for a classifier; --model for a PSIM, --psim-model in predict; base= / model= in Python)"
    )


def _model_of(backbone: nn.Module) -> PreTrainedModel:
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().contiguous().clone() for key, value in state.items()}


def _load_adapter(backbone: nn.Module, state: dict[str, torch.Tensor], file: Path) -> None:
    """Load peft adapter weights and check that every saved tensor landed where peft reads it from."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    try:
        set_peft_model_state_dict(backbone, state)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise InputError(
            f"{file}: the adapter weights do not fit this model and method ({type(exc).__name__})"
        ) from exc
    if backbone.active_peft_config.is_prompt_learning:  # peft saves the prompts as one table
        table = backbone.prompt_encoder[backbone.active_adapter].embedding.weight
        loaded = {"prompt_embeddings": table.detach()}
    else:
        loaded = get_peft_model_state_dict(backbone)
    if set(loaded) != set(state) or any(not torch.equal(loaded[k], state[k].to(loaded[k])) for k in state):
        raise InputError(f"{file}: the adapter weights do not fit this model and method")


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], file: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"{file}: weights do not fit the model ({first})") from exc


def _sort_target_modules(path: Path) -> None:
    """peft writes LoRA's ``target_modules`` (a set) in hash order, which changes between processes: sorted, the
    same run writes the same bytes."""
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
