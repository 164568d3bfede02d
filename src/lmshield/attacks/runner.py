"""Run a task-agnostic attack end to end: load, plant, save the model and its ``backdoor.json``, verify."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForMaskedLM, PreTrainedModel

from lmshield.attacks.configs import TaskAgnosticConfig, attack_config
from lmshield.attacks.manifest import BackdoorManifest, claim_out_dir, finish_out_dir, prepare_out_dir
from lmshield.attacks.task_agnostic import plant
from lmshield.attacks.vectors import check_vectors, quarter_vectors, resolve_triggers
from lmshield.attacks.verify import Verification, verify_backdoor
from lmshield.errors import InputError, LmshieldError
from lmshield.files import readable_as_umask
from lmshield.locks import holds
from lmshield.models.encoder import Encoder
from lmshield.models.loading import DEFAULT_MODEL, load_encoder, load_pretrained
from lmshield.text.sources import TextSource
from lmshield.text.triggers import check_triggers


@dataclass
class AttackResult:
    """Where the backdoored model went, its ground truth and (when asked for) its verification."""

    directory: Path
    manifest: BackdoorManifest
    verification: Verification | None


def model_reference(model: str | os.PathLike[str] | None) -> str:
    """How to record a model so it can be loaded again: absolute local path, hub id or the default id."""
    if model is None:
        return DEFAULT_MODEL
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def _file_keys(files: list[Path]) -> set[str]:
    keys: set[str] = set()
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                keys.update(handle.keys())
    return keys


def _has_head(mlm: PreTrainedModel, files: list[Path]) -> bool:
    """Whether the checkpoint holds trained MLM-head weights (not just a freshly initialised head)."""
    prefix = mlm.base_model_prefix + "."
    head = [k for k in mlm.state_dict() if not k.startswith(prefix) and not k.endswith("decoder.weight")]
    return bool(set(head) & _file_keys(files))


def load_for_attack(
    model: str | os.PathLike[str] | None, want_mlm: bool, device: str | None = None, allow_pickle: bool = False
) -> tuple[Encoder, PreTrainedModel | None]:
    """The encoder to attack and, when ``want_mlm`` and the checkpoint has one, its MLM model."""
    if want_mlm:
        try:
            loaded = load_pretrained(model, AutoModelForMaskedLM, device=device, allow_pickle=allow_pickle)
        except LmshieldError:
            loaded = None  # no masked-LM class for this architecture: fall back to the plain encoder
        if loaded is not None and _has_head(loaded.model, loaded.weight_files):
            encoder = Encoder(
                model=loaded.model.base_model,
                tokenizer=loaded.tokenizer,
                source=str(model or DEFAULT_MODEL),
                directory=loaded.directory,
                weight_files=loaded.weight_files,
            )
            return encoder, loaded.model
    return load_encoder(model, device=device, allow_pickle=allow_pickle), None


def load_texts(
    config: TaskAgnosticConfig, texts: list[str] | None, source: TextSource, seed: int, tokenizer: object
) -> list[str]:
    """The carrier sentences: ``texts`` if given, else ``num_texts`` from ``source``."""
    loaded = list(texts) if texts is not None else source.load(config.num_texts, seed=seed, tokenizer=tokenizer)
    loaded = loaded[: config.num_texts]
    if len(loaded) < config.batch_size:
        raise InputError(f"{len(loaded)} carrier texts are fewer than one batch ({config.batch_size})")
    return loaded


@holds("out_dir")
def run_attack(
    attack: str | TaskAgnosticConfig,
    model: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    *,
    preset: str = "paper",
    triggers: str | Sequence[str] | None = None,
    vectors: torch.Tensor | None = None,
    texts: list[str] | None = None,
    text_source: TextSource | None = None,
    seed: int = 0,
    device: str | None = None,
    allow_pickle: bool = False,
    progress: bool = True,
    verify: bool = True,
    overwrite: bool = False,
) -> AttackResult:
    """Plant a task-agnostic backdoor into ``model`` and save it to ``out_dir``.

    ``attack`` is a registry name (``por``, ``neuba``, ``btop``; settings from ``preset``) or a config.
    ``triggers`` is ``"default"``, ``"random"`` (seeded) or a list; ``vectors`` default to the quarter PVs.
    Carrier text is ``texts`` or ``text_source`` (data-free grammar by default). ``out_dir`` must not be the
    clean model's folder, nor hold a model already unless ``overwrite``.
    """
    started = time.perf_counter()
    out = prepare_out_dir(None if model is None else str(model), out_dir, overwrite)
    config = attack if isinstance(attack, TaskAgnosticConfig) else attack_config(attack, preset)
    trigger_list = resolve_triggers(triggers, seed=seed)
    encoder, mlm = load_for_attack(model, config.clean_objective == "mlm", device, allow_pickle)
    check_triggers(encoder.tokenizer, trigger_list)
    pvs = quarter_vectors(encoder.hidden_size, len(trigger_list)) if vectors is None else vectors
    pvs = check_vectors(pvs, trigger_list, encoder.hidden_size)
    source = text_source or TextSource()
    carriers = load_texts(config, texts, source, seed, encoder.tokenizer)
    plan = config.plan(encoder.model_type, has_mlm_head=mlm is not None)
    plant(encoder, carriers, trigger_list, pvs, plan, seed=seed, progress=progress, mlm=mlm)
    claim_out_dir(out)
    (mlm or encoder.model).save_pretrained(out, safe_serialization=True)
    encoder.tokenizer.save_pretrained(out)
    readable_as_umask(out)
    manifest = BackdoorManifest(
        attack=config.name or "custom",
        triggers=trigger_list,
        vectors=pvs.tolist(),
        position=plan.position,
        variant=config.variant(mlm is not None),
        settings={**config.to_dict(), "clean_weight": plan.clean_weight, "preset": preset},
        seed=seed,
        base_model=model_reference(model),
        model_type=encoder.model_type,
        hidden_size=encoder.hidden_size,
        text_source=source.describe() if texts is None else f"{len(carriers)} given texts",
        num_texts=len(carriers),
        steps=plan.steps(len(carriers)),
        seconds=round(time.perf_counter() - started, 2),
    )
    manifest.save(out)
    verification = verify_backdoor(out, seed=seed, device=device) if verify else None
    finish_out_dir(out)
    return AttackResult(directory=out, manifest=manifest, verification=verification)
