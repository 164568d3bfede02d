"""The encoder handle every defense and attack works with."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from transformers import PreTrainedModel

from lmshield.files import readable_as_umask
from lmshield.models.architectures import get_architecture
from lmshield.models.positions import WatchedPosition


def sha256_of_files(files: list[Path]) -> str:
    """sha256 over the bytes of ``files``, read in name order, 1 MiB at a time."""
    digest = hashlib.sha256()
    for file in sorted(files):
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# What transformers reads besides the weights and what changes a model's outputs with them: a changed
# config.json (activation, head count) or vocabulary is another model, though its weights are the same bytes.
DEFINING_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
)


POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2}  # position ids start after the padding index

# Keys transformers writes about where and by what a file was saved, not about the model.
SAVING_KEYS = frozenset({"_name_or_path", "name_or_path", "transformers_version", "local_files_only", "is_local"})


def model_fingerprint(directory: Path, weight_files: list[Path]) -> str:
    """sha256 over a model folder's weights and the files in :data:`DEFINING_FILES` it holds (JSON files
    without :data:`SAVING_KEYS`, so that saving a model again keeps its fingerprint)."""
    digest = hashlib.sha256(bytes.fromhex(sha256_of_files(weight_files)))
    for name in DEFINING_FILES:
        if (directory / name).is_file():
            digest.update(name.encode() + b"\0" + _defining_bytes(directory / name))
    return "sha256:" + digest.hexdigest()


def _defining_bytes(file: Path) -> bytes:
    data = file.read_bytes()
    if file.suffix != ".json":
        return data
    try:
        parsed = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return data  # the loader has read it already; damaged bytes are hashed as they are
    if isinstance(parsed, dict):
        parsed = {key: value for key, value in parsed.items() if key not in SAVING_KEYS}
    return json.dumps(parsed, sort_keys=True).encode()


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode (no dropout) for the block, its own mode restored after: an encoder a caller has
    just trained is still in train mode, and its dropout would make every output depend on the global RNG."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class Encoder:
    """A loaded encoder: model, tokenizer and the embedding-space access that PV mining needs."""

    model: PreTrainedModel
    tokenizer: object
    source: str
    directory: Path | None = None
    weight_files: list[Path] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or config.d_model)

    @property
    def embedding_matrix(self) -> torch.Tensor:
        """Input word-embedding matrix, shape ``(vocab, embedding_size)``."""
        return self.model.get_input_embeddings().weight

    @property
    def max_positions(self) -> int | None:
        """The longest input (special tokens included) the model's position table holds, if it has one."""
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if not isinstance(positions, int) or positions <= 0:
            return None
        return positions - POSITION_OFFSET.get(self.model_type, 0)

    @property
    def token_rows(self) -> int:
        """How many rows of the embedding matrix belong to tokens: models pad the matrix past the vocabulary
        (to a multiple of 64, say), and those rows have no token."""
        return min(len(self.tokenizer), int(self.embedding_matrix.shape[0]))  # type: ignore[arg-type]

    @property
    def embedding_size(self) -> int:
        return int(self.embedding_matrix.shape[1])

    @property
    def mask_token_id(self) -> int | None:
        return getattr(self.tokenizer, "mask_token_id", None)

    def default_position(self) -> WatchedPosition:
        arch = get_architecture(self.model_type)
        return WatchedPosition.parse(arch.default_position if arch else "cls")

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the weight, config and tokenizer files (:func:`model_fingerprint`), or over the tensors
        for in-memory models."""
        if self.weight_files and self.directory is not None:
            return model_fingerprint(self.directory, self.weight_files)
        if self.weight_files:
            return "sha256:" + sha256_of_files(self.weight_files)
        return self.tensor_fingerprint()

    def tensor_fingerprint(self) -> str:
        """sha256 over the model's tensors (names and values), wherever they were loaded from."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            # raw bytes through a uint8 view: numpy has no bfloat16 (fp32 bytes are the same either way)
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return "sha256:" + digest.hexdigest()

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """Right-padded batch with ``word_ids`` (-1 for special and pad tokens) on the encoder's device (right-padded
        whatever the tokenizer's own side: XLNet's pads left, which moves every watched index)."""
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt", padding_side="right"
        )
        word_ids = torch.tensor([[-1 if w is None else w for w in batch.word_ids(i)] for i in range(len(texts))])
        return {
            "input_ids": batch["input_ids"].to(self.device),
            "attention_mask": batch["attention_mask"].to(self.device),
            "word_ids": word_ids.to(self.device),
        }

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states for embedded inputs, shape ``(batch, seq, hidden)``."""
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def watched_outputs(
        self, texts: list[str], position: WatchedPosition, max_length: int = 128, batch_size: int = 64
    ) -> torch.Tensor:
        """Watched-position outputs of plain texts, shape ``(len(texts), hidden)``, on the CPU (eval mode)."""
        outputs = []
        with evaluating(self.model):
            for start in range(0, len(texts), batch_size):
                batch = self.tokenize(texts[start : start + batch_size], max_length)
                hidden = self.hidden_states(self.embed(batch["input_ids"]), batch["attention_mask"])
                index = position.locate(batch["input_ids"], batch["attention_mask"], self.mask_token_id)
                outputs.append(hidden[torch.arange(len(index)), index].float().cpu())
        return torch.cat(outputs) if outputs else torch.empty(0, self.hidden_size)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Save model (safetensors) and tokenizer so :meth:`from_pretrained` can read them back."""
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        return readable_as_umask(directory)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path | None = None, *, device: str | None = None, allow_pickle: bool = False
    ) -> Encoder:
        """:func:`lmshield.models.load_encoder`: safetensors only, never remote code (``None``: the default)."""
        from lmshield.models.loading import load_encoder

        return load_encoder(name_or_path, device=device, allow_pickle=allow_pickle)
