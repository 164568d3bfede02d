"""Benchmark PSIM on SST-2 (or CR, CoLA) against weight-poisoned MiniLM-L6 (proxy IMDB): BadNet, InSent, SynAttack.

    .venv/bin/python benchmarks/bench_psim.py --preset fast     # ~20 min on 2 CPU cores (subsets, 2 epochs)
    .venv/bin/python benchmarks/bench_psim.py --preset release  # paper settings: hours on CPU, ~10 min/attack on H100
    .venv/bin/python benchmarks/bench_psim.py --preset smoke    # minutes: pipeline check, numbers meaningless

Steps per attack: poison the IMDB proxy set and fully fine-tune the embedded all-MiniLM-L6-v2 (cached in
benchmarks/.cache/psim-<preset>/<attack>); fit PSIM once on SST-2 training texts (labels dropped); tune one
victim per strategy (full, LoRA, prompt, P-tuning, prefix) from the released weights with the released head
kept; score clean and triggered SST-2 test inputs. Baselines on the LoRA victim (``--baselines``, rows of
the same table): STRIP (calibrated to the same FRR as PSIM), ONION with ``--onion-lm PATH`` (a small GPT-2
trained here: benchmarks/make_onion_lm.py; ``--onion-max-drop`` calibrates its threshold) and, for
BadNet ``mn`` with target 0, the precomputed back-translation and SCPN paraphrases. The SynAttack here
uses the rule-based stand-in for SCPN, not SCPN; ``--clauses generated`` gives it varied opening clauses
(a shape trigger rather than five fixed phrases). ``--victim-train N --victim-epochs E`` train the victims
on more data than the preset's (``--victim-lr`` at another lr); ``--psim-train N`` gives PSIM's one epoch N task
texts (6920: all of SST-2's, as the release); ``--psim-span text`` has PSIM read the whole input only, as the
release (default: also each clause). ``--tasks cr,cola`` evaluates the same releases on other tasks.
Results: benchmarks/results/psim-<preset>[-<what the run changes>].md and .json; the fitted PSIM, histograms
and per-strategy progress under the cache folder (<attack>-eval-<settings digest>), so an
interrupted run resumes where it stopped.
Set OMP_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
ATTACKS = ("badnet", "insent", "syntactic")

# poisoning presets: "fast" comes from the attack configs; "smoke" shrinks it further
SMOKE_POISON = {"num_texts": 96, "poison_count": 36, "max_words": 24, "max_length": 32, "epochs": 1, "batch_size": 16}


def poison_overrides(attack: str, args: argparse.Namespace) -> dict:
    """The attack settings this run changes from the preset's."""
    overrides = {"label_mode": args.label_mode, "position_jitter": args.position_jitter}
    if args.poison_count is not None:
        overrides["poison_count"] = args.poison_count
    if attack == "syntactic":
        overrides["sentences"] = args.sentences
        overrides["clauses"] = args.clauses
    return overrides


def variant_suffix(overrides: dict) -> str:
    """Whatever :func:`poison_overrides` changes from the release's settings, as a name suffix."""
    parts = [] if overrides["label_mode"] == "clean" else [overrides["label_mode"]]
    parts += [str(overrides["poison_count"])] if "poison_count" in overrides else []
    parts += [f"jit{overrides['position_jitter']}"] if overrides["position_jitter"] else []
    parts += ["first"] if overrides.get("sentences") == "first" else []
    parts += ["gen"] if overrides.get("clauses") == "generated" else []
    parts += ["control"] if overrides.get("control") else []
    return "".join(f"-{part}" for part in parts)


def poison(attack: str, preset: str, data: Path, cache: Path, model: str | None, overrides: dict) -> Path:
    """The released model of ``attack`` (cached: rerunning resumes)."""
    from lmshield.attacks.poisoning import poison_config, poison_model
    from lmshield.tuning import read_labelled

    name = attack + variant_suffix(overrides)
    out = cache / (name if cache.name == f"psim-{preset}" else f"{name}-{preset}")
    if (out / "backdoor.json").is_file():
        return out
    overrides = {**(SMOKE_POISON if preset == "smoke" else {}), **overrides}
    config = poison_config(attack, "release" if preset == "release" else "fast", **overrides)
    train = read_labelled(data / "imdb" / "train.json")
    dev = read_labelled(data / "imdb" / "dev.json").head(
        1000 if preset == "release" else 64 if preset == "smoke" else 200
    )
    result = poison_model(model, train, config, out, dev=dev, data_description="imdb/train.json", overwrite=True)
    print(result.summary(), flush=True)
    return out


def not_planted(released: Path) -> str:
    """The release check's verdict when it says the backdoor did not take, else ``""``."""
    from lmshield.attacks.poisoning import PoisonManifest

    manifest = PoisonManifest.load(released)
    return manifest.verdict() if manifest.planted is False else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("fast", "release", "smoke"), default="fast")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", default=None, help="clean model dir / hub id (default: embedded MiniLM-L6)")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--tasks", default="sst-2", help="comma-separated task folders under --data (sst-2, cr, cola)")
    parser.add_argument("--strategies", default=None, help="comma-separated; default from the preset")
    parser.add_argument("--poison-count", type=int, default=None, help="poisoned proxy texts (default: preset)")
    parser.add_argument(
        "--poison-preset",
        choices=("fast", "release", "smoke"),
        default=None,
        help="poisoning preset (default: --preset)",
    )
    parser.add_argument(
        "--label-mode", choices=("clean", "dirty"), default="clean", help="clean-label (the release) or dirty-label"
    )
    parser.add_argument(
        "--sentences", choices=("all", "first"), default="all", help="SynAttack: rewrite every sentence or the first"
    )
    parser.add_argument(
        "--clauses",
        choices=("fixed", "generated"),
        default="fixed",
        help="SynAttack: five fixed opening clauses or generated ones",
    )
    parser.add_argument(
        "--position-jitter", type=int, default=0, help="train the released model with position ids shifted 0..N"
    )
    parser.add_argument("--target-frr", type=float, default=None, help="calibrate PSIM on SST-2 dev texts")
    parser.add_argument("--victim-train", type=int, default=None, help="SST-2 sentences per victim (default: preset)")
    parser.add_argument("--victim-epochs", type=int, default=None, help="victim epochs (default: preset)")
    parser.add_argument("--victim-lr", type=float, default=None, help="every victim's lr (default: each method's)")
    parser.add_argument("--max-dev", type=int, default=None, help="dev texts to calibrate on (0: all; default: preset)")
    parser.add_argument("--max-test", type=int, default=None, help="test texts (0: all; default: preset)")
    parser.add_argument(
        "--psim-train", type=int, default=None, help="task training texts PSIM's one epoch reads (default: preset)"
    )
    parser.add_argument(
        "--psim-span", choices=("text", "clauses"), default=None, help="whole input (release) or also each clause"
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="also a control release of each attack (same fine-tuning, nothing poisoned), its victims behind the "
        "release's PSIM: what PSIM lets through to the target when no backdoor is there",
    )
    parser.add_argument("--baselines", action="store_true", help="STRIP and paraphrase baselines (LoRA victim)")
    parser.add_argument("--onion-lm", default=None, help="with --baselines: also ONION with this causal LM (path)")
    parser.add_argument(
        "--onion-max-drop", type=float, default=None, help="calibrate ONION to this clean-accuracy drop on dev"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--fresh", action="store_true", help="discard the evaluation progress in the cache (another user's, say)"
    )
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    missing = [t for t in tasks if not (args.data / t / "train.json").is_file()]
    if missing or not (args.data / "imdb" / "train.json").is_file():
        print(f"no data at {args.data} ({', '.join(missing) or 'imdb'})", file=sys.stderr)
        return 2

    from lmshield.evaluation.baselines_eval import BaselineSettings
    from lmshield.evaluation.psim_eval import EvalSettings, evaluate_release, markdown_table
    from lmshield.jsonio import dumps

    settings = EvalSettings.preset(args.preset)
    changes = {"target_frr": args.target_frr}
    if args.victim_train is not None:
        changes["max_train"] = args.victim_train
    for option in ("max_dev", "max_test"):
        if (size := getattr(args, option)) is not None:
            changes[option] = size or None  # 0: the whole file
    if args.psim_train is not None:
        changes["psim_train"] = args.psim_train
    if args.psim_span is not None:
        changes["psim"] = {**settings.psim, "span": args.psim_span}
    victim = {k: v for k, v in {"epochs": args.victim_epochs, "lr": args.victim_lr}.items() if v is not None}
    if victim:
        changes["victim"] = {**settings.victim, **victim}
    if args.strategies:
        changes["strategies"] = tuple(s for s in args.strategies.split(",") if s)
    if args.baselines and "lora" not in (changes.get("strategies") or settings.strategies):
        changes["strategies"] = (*settings.strategies, "lora")
    settings = dataclasses.replace(settings, **changes)
    baseline_names = ("strip", "paraphrase-back", "paraphrase-scpn", *(("onion",) if args.onion_lm else ()))
    baselines = None
    if args.baselines:
        baselines = BaselineSettings(baseline_names, ("lora",), args.onion_lm, onion_max_drop=args.onion_max_drop)
    cache = ROOT / "benchmarks" / ".cache" / f"psim-{args.preset}"
    rows, extra, started = [], {}, time.perf_counter()
    attacks = args.attacks.split(",")
    for attack in attacks:
        t0 = time.perf_counter()
        poison_preset = args.poison_preset or args.preset
        overrides = poison_overrides(attack, args)
        released = poison(attack, poison_preset, args.data, cache, args.model, overrides)
        if (unplanted := not_planted(released)) and args.preset == "smoke":  # a pipeline check: numbers meaningless
            print(f"{attack}: {released} is {unplanted}; evaluated all the same (smoke preset)")
        elif unplanted:  # a table measured against no backdoor would read as a result
            print(f"{attack}: {released} is {unplanted}; not evaluated (poison again with other settings)")
            extra[attack] = {"skipped": unplanted}
            continue
        models = [released]
        if args.control:  # the no-backdoor baseline: what a model fine-tuned alike answers on the triggered inputs
            models.append(poison(attack, poison_preset, args.data, cache, args.model, {**overrides, "control": True}))
        for model, task in ((m, t) for m in models for t in tasks):
            suffix = f"-eval-{settings.digest()}" + ("" if task == "sst-2" else f"-{task}")
            gate = None if model == released else cache / f"{released.name}{suffix}" / "psim"  # the release's PSIM
            where = f"{model.name}{'' if gate is None else '-gated'}{suffix}"
            evaluation = evaluate_release(
                model, args.data / task, settings, out_dir=cache / where, device=args.device,
                baselines=baselines, fresh=args.fresh, psim=gate,
            )  # fmt: skip
            for row in evaluation.all_rows if args.control else ():
                row.extra["release"] = model.name
            rows.extend(evaluation.all_rows)
            key = (model.name if model != released else attack) + ("" if task == "sst-2" else f"/{task}")
            extra[key] = {"seconds": time.perf_counter() - t0, "threshold": evaluation.threshold}
            t0 = time.perf_counter()
            print(markdown_table(evaluation.all_rows), flush=True)
    table = markdown_table(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = f"# PSIM benchmark ({args.preset}), {time.perf_counter() - started:.0f} s\n\n"
    named_by = "syntactic" if "syntactic" in attacks else attacks[0]  # --sentences / --clauses name only SynAttack runs
    name = f"psim-{args.preset}" + variant_suffix(poison_overrides(named_by, args))
    name += "" if args.poison_preset in (None, args.preset) else f"-poison-{args.poison_preset}"
    name += "" if args.victim_train is None else f"-victims{args.victim_train}"
    name += "" if args.victim_epochs is None else f"x{args.victim_epochs}"
    name += "" if args.victim_lr is None else f"-lr{args.victim_lr:g}"
    name += "-control" if args.control else ""
    name += "" if args.max_dev is None else f"-dev{args.max_dev or 'all'}"
    name += "" if args.max_test is None else f"-test{args.max_test or 'all'}"
    name += "" if args.psim_train is None else f"-psim{args.psim_train}"
    name += "" if args.psim_span is None else f"-span-{args.psim_span}"
    name += "" if args.target_frr is None else f"-frr{args.target_frr:g}"
    name += "" if attacks == list(ATTACKS) else "-" + "+".join(attacks)  # one attack's run keeps the others' table
    name += "" if not args.strategies else "-" + "+".join(settings.strategies)  # a partial table keeps the full one
    name += "" if tasks == ["sst-2"] else "-" + "+".join(tasks)
    (RESULTS / f"{name}.md").write_text(header + table, encoding="utf-8")
    payload = {"settings": dataclasses.asdict(settings), "rows": [r.to_dict() for r in rows], "extra": extra}
    (RESULTS / f"{name}.json").write_text(dumps(payload, indent=2), encoding="utf-8")
    print(header + table)
    print(dumps(extra, indent=2))
    return 0 if rows else 1  # every release skipped: nothing was measured


if __name__ == "__main__":
    sys.exit(main())
