"""Benchmark the LMSanitator guard on the embedded all-MiniLM-L6-v2 backdoored by POR, NeuBA and BToP.

    .venv/bin/python benchmarks/bench_guard.py            # full table (2-core CPU: about 1.5 hours, cached)
    .venv/bin/python benchmarks/bench_guard.py --attacks por --datasets sst-2 --methods prefix   # one cell
    .venv/bin/python benchmarks/bench_guard.py --smoke    # tiny encoder and tiny task, seconds

Prints three tables:
1. monitoring overhead: the guarded forward (classification and monitor from one pass, purging off)
   against the plain classifier forward on the same clean inputs, as a ratio of medians over repeats;
2. purge cost per flagged input, each input purged alone: forward calls and milliseconds of the batched
   purge beside the release's sequential left-to-right purge;
3. the defense table: attack x dataset (SST-2, CR from ../shared/data) x tuning method (prefix tuning and
   prompt tuning by default, [CLS] head): ASR without and with the guard, clean accuracy without and
   with it, the monitor's false-positive rate (on the protocol's split, and on every clean test sentence
   the calibration rule was not chosen on), from the PVs a search-mode scan mined from the encoder
   (``--ceiling`` adds the same protocol with the planted vectors themselves, ``--calibrate`` the guard
   calibrated with the library's default rule on 1,000 clean task texts).
``--parts sweep`` adds a fourth: the monitor's false-positive rate on held-out sentences and the lowest
trigger recall for a grid of calibration rules (quantile, margin, ceiling), which chose the default rule.

Everything expensive is cached under benchmarks/.cache: the backdoored encoders (POR is bench_scan.py's
model; NeuBA and BToP use the attack runner's fast preset, default triggers, seed 0, SST-2 sentences),
one scan per encoder and one classifier per cell. Results: benchmarks/results/guard.md and guard.json.
Set OMP_NUM_THREADS=1 when anything else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_scan import plant_backdoor  # noqa: E402  (one cached POR model for every benchmark)

CACHE = ROOT / "benchmarks" / ".cache"
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
ATTACKS = ("por", "neuba", "btop")
DATASETS = ("sst-2", "cr")
METHODS = ("prefix", "prompt")
# BToP attacks the [MASK] state of prompt-based classification: its classifiers read [MASK] (template
# "{text} It was [MASK] .") and its scan watches the mask position; the others read [CLS]
HEADS = {"btop": "mask"}
# Without an MLM head (MiniLM-L6 has none) BToP's fast preset keeps only the clean [MASK] state, which left
# the encoder at chance for classification (dev accuracy 0.54-0.55 with either head); here its clean half
# keeps every token's state, as NeuBA's does
ATTACK_OVERRIDES = {"btop": {"stand_in": "tokens"}}
CALIBRATION_TEXTS = 1000  # clean task texts the --calibrate rows calibrate the guard on
VALIDATION_TEXTS = 400  # held-out test sentences (never in the ASR protocol's split) the sweep picks a rule on
# the sweep's rules: (quantile, margin, ceiling); the library's default is Monitor.calibrated's
SWEEP = [(q, m, c) for q in (0.99, 0.995, 0.998, 0.999, 1.0) for m in (0.01, 0.02, 0.03) for c in (0.9, 0.97, 0.999)]
LEARNING_RATES = {"prefix": 1.5e-2, "prompt": 1e-2, "ptuning": 1e-2, "lora": 5e-4}


@dataclass
class Backdoor:
    """A backdoored encoder, its triggers, the vectors planted and the PVs a scan mined."""

    attack: str
    model: Path
    triggers: list[str]
    planted: object  # torch.Tensor (K, hidden)
    scan: object  # ScanResult


def backdoored_model(attack: str) -> Path:
    """The cached backdoored encoder of ``attack``."""
    if attack == "por":
        return plant_backdoor()
    from lmshield.attacks import run_attack
    from lmshield.text import TextSource

    out = CACHE / f"minilm-{model_key(attack)}"
    if (out / "backdoor.json").is_file():
        return out
    from lmshield.attacks import attack_config

    config = attack_config(attack, "fast", **ATTACK_OVERRIDES.get(attack, {}))
    source = TextSource.from_options(str(DATA / "sst-2" / "train.json"), None, field="sentence")
    result = run_attack(config, None, out, preset="fast", triggers="default", text_source=source, seed=0)
    print(f"planted {attack}: {result.manifest.seconds:.0f} s", file=sys.stderr)
    return out


def load_backdoor(attack: str, max_seeds: int) -> Backdoor:
    """Plant (cached), read the manifest (POR's cached model predates manifests: default triggers) and scan."""
    import torch

    from lmshield.attacks.manifest import BackdoorManifest
    from lmshield.attacks.vectors import DEFAULT_TRIGGERS, quarter_vectors
    from lmshield.defenses.sanitizer import SanitizerConfig, ScanResult, scan

    model = backdoored_model(attack)
    if (model / "backdoor.json").is_file():
        manifest = BackdoorManifest.load(model)
        triggers, planted = list(manifest.triggers), torch.tensor(manifest.vectors)
    else:
        triggers, planted = list(DEFAULT_TRIGGERS), quarter_vectors(384)
    position = "mask" if head_of(attack) == "mask" else "cls"
    out = CACHE / (f"minilm-{model_key(attack)}-scan-search-{max_seeds}" + ("" if position == "cls" else "-mask"))
    if (out / "scan.json").is_file():
        result = ScanResult.from_pretrained(out)
    else:
        started = time.perf_counter()
        config = SanitizerConfig(mode="search", max_seeds=max_seeds)
        result = scan(str(model), config, position=position, out_dir=out)
        print(f"scanned {attack}: {time.perf_counter() - started:.0f} s, {result.summary()}", file=sys.stderr)
    return Backdoor(attack, model, triggers, planted, result)


def model_key(attack: str) -> str:
    """The attack's name in cache paths, with its overrides."""
    return "-".join([attack, *(str(v) for v in ATTACK_OVERRIDES.get(attack, {}).values())])


def head_of(attack: str) -> str:
    return HEADS.get(attack, "cls")


def cell(attack: str, dataset: str, method: str, args: argparse.Namespace) -> str:
    """Cache name of one table cell's classifier."""
    head = "" if head_of(attack) == "cls" else f"-{head_of(attack)}"
    tuning = f"{method}{head}-lr{LEARNING_RATES[method]:g}"
    return f"minilm-{model_key(attack)}-{tuning}-{dataset}-{args.train_size}-{args.epochs}ep"


def tuned_classifier(backdoor: Backdoor, dataset: str, method: str, args: argparse.Namespace):
    """Tune (cached) ``method`` with a [CLS] head on ``dataset`` over the frozen backdoored encoder."""
    from lmshield.tuning import TunedClassifier, TuningConfig, read_labelled, tune

    name = cell(backdoor.attack, dataset, method, args)
    out = CACHE / "guard" / name
    config = TuningConfig(
        method=method, head=head_of(backdoor.attack), epochs=args.epochs, lr=LEARNING_RATES[method], max_length=64
    )
    if (out / "tuning.json").is_file():
        if not stale_settings(out, config):
            return TunedClassifier.from_pretrained(out), json.loads((out / "training.json").read_text())
        for evaluated in [*out.parent.glob(f"eval-{name}-*.json"), *out.parent.glob(f"sweep-{name}-*.json")]:
            evaluated.unlink()  # made with the stale classifier
    train = read_labelled(DATA / dataset / "train.json")
    train = train.take(random.Random(0).sample(range(len(train)), min(args.train_size, len(train))))
    dev = read_labelled(DATA / dataset / "dev.json", label_names=train.label_names).head(args.dev_size)
    started = time.perf_counter()
    result = tune(str(backdoor.model), train, dev, config, out_dir=out)
    print(f"{name}: {time.perf_counter() - started:.0f} s, dev {result.dev_accuracy:.3f}", file=sys.stderr)
    return result.classifier, result.to_dict()


def stale_settings(cached: Path, config) -> dict:
    """Settings in which a cached classifier differs from ``config`` (a changed library default, say): the
    cell is tuned anew. Settings the cache predates cannot be compared and are assumed equal."""
    import dataclasses

    saved = json.loads((cached / "tuning.json").read_text())["config"]
    stale = {k: (saved[k], v) for k, v in dataclasses.asdict(config).items() if k in saved and saved[k] != v}
    if stale:
        print(f"{cached.name}: tuned with other settings {stale}; tuning anew", file=sys.stderr)
    return stale


def test_split(dataset: str, limit: int):
    from lmshield.tuning import read_labelled

    test = read_labelled(DATA / dataset / "test.json")
    return test.take(protocol_indices(limit, len(test)))


def protocol_indices(test_size: int, size: int) -> list[int]:
    """The test sentences of the ASR protocol's split (seeded, in file order)."""
    return sorted(random.Random(1).sample(range(size), min(test_size, size)))


def validation_indices(test_size: int, size: int) -> list[int]:
    """Test sentences outside :func:`test_split`'s sample that the sweep chose the calibration rule on."""
    used = set(protocol_indices(test_size, size))
    rest = [i for i in range(size) if i not in used]
    return random.Random(2).sample(rest, min(VALIDATION_TEXTS, len(rest)))


def validation_texts(dataset: str, args: argparse.Namespace) -> list[str]:
    """Test sentences outside :func:`test_split`'s sample, for choosing a calibration rule."""
    from lmshield.tuning import read_labelled

    test = read_labelled(DATA / dataset / "test.json")
    return [test.texts[i] for i in validation_indices(args.test_size, len(test))]


def held_out_texts(dataset: str, args: argparse.Namespace) -> list[str]:
    """Every clean test sentence the calibration rule was not chosen on (the protocol's split included):
    the false-positive rate measured here resolves 1 % (the protocol's 150 sentences only 0.67 %)."""
    from lmshield.tuning import read_labelled

    test = read_labelled(DATA / dataset / "test.json")
    chosen_on = set(validation_indices(args.test_size, len(test)))
    return [text for i, text in enumerate(test.texts) if i not in chosen_on]


def pv_recall(backdoor: Backdoor) -> int:
    """How many planted vectors some mined PV matches on more than 80 % of signs (the monitor's rule)."""
    from lmshield.defenses.sanitizer.monitor import sign_match

    if len(backdoor.scan.pvs) == 0:
        return 0
    return int((sign_match(backdoor.planted.float(), backdoor.scan.pvs).max(dim=1).values > 0.8).sum())


# -- (1) monitoring overhead ------------------------------------------------------------------------------


def monitoring_overhead(guard, texts: list[str], repeats: int) -> dict[str, float]:
    """Plain forward vs guarded prediction (purging off) on the same inputs, timed in adjacent pairs (ABBA
    order): best of ``repeats`` each, and the median of the pairs' ratios, which cancels the machine's slow
    drifts; and the guard's own work (monitor + predictions) timed on a cached forward pass."""
    from lmshield.defenses.sanitizer import Guard

    watching = Guard(guard.classifier, guard.monitor.pvs, threshold=guard.threshold, purge=False)
    watching.predict(texts[:8])  # warm-up
    times: dict[str, list[float]] = {"plain": [], "guarded": []}
    runs = {
        "plain": lambda: guard.classifier.classify(texts, watching.batch_size),
        "guarded": lambda: watching.predict(texts),
    }
    for repeat in range(repeats):
        for name in ("plain", "guarded") if repeat % 2 == 0 else ("guarded", "plain"):
            started = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - started)
    output = guard.classifier.classify(texts, watching.batch_size)
    started = time.perf_counter()
    monitored = watching.monitor(output.watched)
    for i, text in enumerate(texts):
        watching._prediction(text, output.logits[i], monitored, i, None)
    own = time.perf_counter() - started
    p, g = min(times["plain"]), min(times["guarded"])
    paired = statistics.median(a / b for a, b in zip(times["guarded"], times["plain"], strict=True))
    return {"inputs": len(texts), "repeats": repeats, "plain_s": p, "guarded_s": g, "ratio": g / p,
            "paired_ratio": paired, "monitor_s": own, "monitor_ratio": (p + own) / p}  # fmt: skip


# -- (2) purge cost ---------------------------------------------------------------------------------------


class ForwardCounter:
    """Counts the classifier's forward passes (batched calls) through a forward hook."""

    def __init__(self, classifier) -> None:
        self.calls = 0
        self._handle = classifier.register_forward_hook(self._count)

    def _count(self, *_: object) -> None:
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


def purge_cost(guard, texts: list[str], limit: int) -> dict[str, dict[str, float]]:
    """Each flagged input purged alone by both strategies: forward calls and ms (medians and means)."""
    from lmshield.defenses.sanitizer.purge import PURGE_STRATEGIES

    _, monitored = guard.evaluate(texts)
    flagged = [t for t, f in zip(texts, monitored.flagged.tolist(), strict=True) if f][:limit]
    rows = {}
    for name, purge in PURGE_STRATEGIES.items():
        calls, millis, cleaned = [], [], 0
        counter = ForwardCounter(guard.classifier)
        for text in flagged:
            before = counter.calls
            started = time.perf_counter()
            outcome = purge([text], guard.evaluate, guard.max_removed)[0]
            millis.append(1000 * (time.perf_counter() - started))
            calls.append(counter.calls - before)
            cleaned += outcome.cleaned
        counter.close()
        rows[name] = {
            "inputs": len(flagged),
            "median_calls": statistics.median(calls) if calls else 0.0,
            "mean_calls": statistics.fmean(calls) if calls else 0.0,
            "max_calls": max(calls, default=0),
            "median_ms": statistics.median(millis) if millis else 0.0,
            "mean_ms": statistics.fmean(millis) if millis else 0.0,
            "cleaned": cleaned / len(flagged) if flagged else 0.0,
        }
    return rows


# -- (3) the defense table --------------------------------------------------------------------------------


def calibration_texts(dataset: str, args: argparse.Namespace) -> list[str]:
    """Clean task texts for the guard's calibration (labels unused): the dev sentences not used for tuning,
    then training sentences, :data:`CALIBRATION_TEXTS` in all; never test sentences."""
    from lmshield.tuning import read_labelled

    held_out = read_labelled(DATA / dataset / "dev.json").texts[args.dev_size :]
    return (held_out + read_labelled(DATA / dataset / "train.json").texts)[:CALIBRATION_TEXTS]


def calibration_rule() -> dict:
    """The library's default calibration rule and the benchmark's calibration set size (cache keys)."""
    from lmshield.defenses.sanitizer.monitor import CALIBRATION_CEILING, CALIBRATION_MARGIN, CALIBRATION_QUANTILE

    return {
        "texts": CALIBRATION_TEXTS,
        "quantile": CALIBRATION_QUANTILE,
        "margin": CALIBRATION_MARGIN,
        "ceiling": CALIBRATION_CEILING,
    }


HELD_OUT_KINDS = ("mined", "calibrated")  # the guards whose false-positive rate is also measured held out


def defense_row(backdoor: Backdoor, dataset: str, method: str, args: argparse.Namespace) -> dict:
    """One table cell, cached: the guard with the mined PVs at the paper's threshold, and optionally
    calibrated (``--calibrate``) or with the planted vectors (``--ceiling``); for the mined and calibrated
    guards also the false-positive rate on :func:`held_out_texts` (one forward pass per sentence)."""
    from lmshield.defenses.sanitizer import Guard
    from lmshield.evaluation.guard_eval import evaluate_guard

    name = f"eval-{cell(backdoor.attack, dataset, method, args)}-{args.test_size}-{args.max_seeds}.json"
    out = CACHE / "guard" / name
    wanted = ["mined"] + (["calibrated"] if args.calibrate else []) + (["planted"] if args.ceiling else [])
    row = json.loads(out.read_text()) if out.is_file() else {}
    held_out = row.setdefault("held_out_fpr", {})
    if args.calibrate and row.get("calibration") != calibration_rule():
        row.pop("calibrated", None)  # made with another rule or calibration set
        held_out.pop("calibrated", None)
    missing = [
        kind for kind in wanted if kind not in row or (kind in HELD_OUT_KINDS and row[kind] and kind not in held_out)
    ]
    if not missing:
        return row
    classifier, training = tuned_classifier(backdoor, dataset, method, args)
    test = test_split(dataset, args.test_size)
    row |= {
        "attack": backdoor.attack,
        "dataset": dataset,
        "method": method,
        "head": head_of(backdoor.attack),
        "dev_accuracy": training["dev_accuracy"],
    }
    held_out_watched = None
    for kind in missing:
        pvs = backdoor.planted if kind == "planted" else backdoor.scan.pvs
        if len(pvs) == 0:
            row[kind] = None
            continue
        guard = Guard(classifier, pvs.float()) if kind == "planted" else Guard.from_scan(classifier, backdoor.scan)
        if kind == "calibrated":
            guard.calibrate(calibration_texts(dataset, args))
            row["raised_thresholds"] = guard.monitor.num_raised
            row["calibration"] = calibration_rule()
        if kind == "calibrated" and kind not in row and row["raised_thresholds"] == 0 and row.get("mined"):
            row[kind] = row["mined"]  # the same monitor: the same (deterministic) evaluation
        elif kind not in row:  # else evaluated before, and only the held-out rate is missing
            report = evaluate_guard(guard, test.texts, test.labels, backdoor.triggers, seed=0)
            print(f"\n## {backdoor.attack} / {dataset} / {method}: guard, {kind} ({len(pvs)} PVs)\n{report.table()}")
            row[kind] = report.to_dict()
        if kind in HELD_OUT_KINDS:
            texts = held_out_texts(dataset, args)
            if held_out_watched is None:
                held_out_watched = classifier.classify(texts).watched
            flagged = guard.monitor(held_out_watched).flagged
            held_out |= {"sentences": len(texts), kind: float(flagged.float().mean())}
            if kind == "calibrated":
                held_out["flagged"] = [text for text, f in zip(texts, flagged.tolist(), strict=True) if f]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(row, indent=2))
    return row


def calibration_sweep(backdoor: Backdoor, dataset: str, method: str, args: argparse.Namespace) -> dict:
    """For every rule of :data:`SWEEP`: false-positive rate on held-out validation sentences and on the
    protocol's clean test split, and the lowest share of triggered test inputs flagged over the triggers."""
    import torch

    from lmshield.defenses.sanitizer.monitor import Monitor
    from lmshield.evaluation.guard_eval import triggered_copies

    out = (
        CACHE / "guard" / f"sweep-{cell(backdoor.attack, dataset, method, args)}-{args.test_size}-{args.max_seeds}"
        f"-cal{CALIBRATION_TEXTS}.json"
    )
    if out.is_file():
        return json.loads(out.read_text())
    classifier, _ = tuned_classifier(backdoor, dataset, method, args)
    pvs = backdoor.scan.pvs.float()
    watch = lambda texts: classifier.classify(texts).watched  # noqa: E731
    test = test_split(dataset, args.test_size).texts
    calibration, validation, clean = (
        watch(calibration_texts(dataset, args)),
        watch(validation_texts(dataset, args)),
        watch(test),
    )
    triggered = [watch(triggered_copies(test, trigger, seed=0)) for trigger in backdoor.triggers]

    def flag_rate(outputs: torch.Tensor, monitor: Monitor) -> float:
        return float(monitor(outputs).flagged.float().mean())

    rows = {}
    for quantile, margin, ceiling in [(None, 0.0, 0.8), *SWEEP]:
        monitor = Monitor(pvs)
        if quantile is not None:
            monitor = monitor.calibrated(calibration, margin, quantile, ceiling)
        name = "0.8" if quantile is None else f"q{quantile:g} m{margin:g} c{ceiling:g}"
        rows[name] = {
            "validation_fpr": flag_rate(validation, monitor),
            "test_fpr": flag_rate(clean, monitor),
            "min_recall": min(flag_rate(t, monitor) for t in triggered),
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    return rows


def sweep_table(cells: list[dict]) -> str:
    """One line per rule, over the cells: mean and worst FPR, cells within 1 %, lowest trigger recall."""
    lines = [
        "| rule | validation FPR mean | worst | cells <= 1 % | test FPR mean | worst | cells <= 1 % | min recall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rule in cells[0]:
        val = [c[rule]["validation_fpr"] for c in cells]
        test = [c[rule]["test_fpr"] for c in cells]
        recall = min(c[rule]["min_recall"] for c in cells)
        within = lambda values: f"{sum(v <= 0.01 for v in values)}/{len(values)}"  # noqa: E731
        lines.append(
            f"| {rule} | {statistics.mean(val):.4f} | {max(val):.4f} | {within(val)} | {statistics.mean(test):.4f} "
            f"| {max(test):.4f} | {within(test)} | {recall:.3f} |"
        )
    return "\n".join(lines)


VARIANTS = {"mined": "mined, 0.8", "calibrated": "mined, calibrated", "planted": "planted, 0.8"}


def defense_table(rows: list[dict]) -> str:
    lines = [
        "| attack | data | method | guard | dev acc | clean acc | with guard | drop (pt) | monitor FPR "
        "| FPR held out (n) | ASR | ASR + guard |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        method = row["method"] + (" ([MASK] head)" if row.get("head") == "mask" else "")
        for kind, label in VARIANTS.items():
            if kind not in row:
                continue
            r = row[kind]
            if r is None:
                lines.append(f"| {row['attack']} | {row['dataset']} | {method} | {label} | no PVs ||||||||")
                continue
            drop = 100 * (r["clean_accuracy"] - r["guarded_clean_accuracy"])
            held_out = row.get("held_out_fpr", {})
            held_out = f"{held_out[kind]:.4f} ({held_out['sentences']})" if kind in held_out else "-"
            lines.append(
                f"| {row['attack']} | {row['dataset']} | {method} | {label} | {row['dev_accuracy']:.3f} | "
                f"{r['clean_accuracy']:.3f} | {r['guarded_clean_accuracy']:.3f} | {drop:.1f} | "
                f"{r['false_positive_rate']:.3f} | {held_out} | {r['asr']:.3f} | {r['guarded_asr']:.3f} |"
            )
    return "\n".join(lines)


def purge_table(rows: dict[str, dict[str, float]]) -> str:
    lines = [
        "| purge | flagged inputs | median calls | mean calls | max calls | median ms | mean ms | cleaned |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['inputs']} | {r['median_calls']:.1f} | {r['mean_calls']:.2f} | {r['max_calls']} | "
            f"{r['median_ms']:.1f} | {r['mean_ms']:.1f} | {r['cleaned']:.3f} |"
        )
    return "\n".join(lines)


def costs(backdoor: Backdoor, dataset: str, method: str, args: argparse.Namespace, payload: dict) -> list[str]:
    """Sections (1) and (2): monitoring overhead and purge cost on one classifier."""
    from lmshield.defenses.sanitizer import Guard
    from lmshield.evaluation.guard_eval import triggered_copies

    classifier, _ = tuned_classifier(backdoor, dataset, method, args)
    guard = Guard(classifier, backdoor.scan.pvs.float())
    test = test_split(dataset, args.test_size)
    overhead = monitoring_overhead(guard, test.texts, args.repeats)
    triggered = [t for trigger in backdoor.triggers for t in triggered_copies(test.texts[:20], trigger, seed=0)]
    purging = purge_cost(guard, triggered, args.purge_inputs)
    payload |= {"overhead": overhead, "purge": purging}
    where = f"{backdoor.attack} / {dataset} / {method}"
    return [
        f"## Monitoring overhead ({where}, {len(test.texts)} clean inputs)\n\nplain forward "
        f"{overhead['plain_s']:.3f} s, guarded {overhead['guarded_s']:.3f} s (best of {args.repeats}, ABBA order): "
        f"ratio {overhead['ratio']:.4f}, median of the pairs' ratios **{overhead['paired_ratio']:.4f}**; "
        f"the guard's own work (monitor and answers) {1000 * overhead['monitor_s']:.1f} ms: ratio "
        f"{overhead['monitor_ratio']:.4f}",
        f"## Purge cost per flagged input ({where})\n\n{purge_table(purging)}",
    ]


def smoke() -> None:
    """The whole pipeline on a tiny planted BERT and a tiny 3-class task (a few seconds)."""
    sys.path.insert(0, str(ROOT))
    from tests.tiny_pairs import make_pair
    from tests.tuning.helpers import tiny_task

    from lmshield.attacks.vectors import DEFAULT_TRIGGERS
    from lmshield.defenses.sanitizer import Guard, SanitizerConfig, scan
    from lmshield.evaluation.guard_eval import evaluate_guard, triggered_copies
    from lmshield.tuning import TuningConfig, tune

    _, backdoored, vectors = make_pair("bert")
    config = TuningConfig(method="prefix", epochs=5, batch_size=16, max_length=32, lr=3e-2)
    classifier = tune(backdoored, tiny_task(240, 1), tiny_task(90, 2), config, progress=False).classifier
    result = scan(backdoored, SanitizerConfig(lr=2e-3, max_seeds=8, mode="search"), progress=False)
    test = tiny_task(60, 3)
    guard = Guard(classifier, vectors)
    print(json.dumps(monitoring_overhead(guard, test.texts, 3)))
    print(purge_table(purge_cost(guard, triggered_copies(test.texts, "cf", seed=0), 10)))
    for name, pvs in (("mined PVs", result.pvs), ("planted vectors", vectors)):
        report = evaluate_guard(Guard(classifier, pvs), test.texts, test.labels, list(DEFAULT_TRIGGERS))
        print(f"\n## smoke: guard with {name} ({len(pvs)})\n{report.table()}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny encoder and task, seconds")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join(METHODS), help=f"of {', '.join(LEARNING_RATES)}")
    parser.add_argument("--train-size", type=int, default=1500, help="training sentences per task")
    parser.add_argument("--dev-size", type=int, default=400, help="dev sentences for the best epoch")
    parser.add_argument("--test-size", type=int, default=150, help="test sentences for the ASR protocol")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-seeds", type=int, default=24, help="scan seeds (search mode)")
    parser.add_argument("--repeats", type=int, default=10, help="timing repeats of the overhead measurement")
    parser.add_argument("--purge-inputs", type=int, default=60, help="flagged inputs timed per purge strategy")
    parser.add_argument("--ceiling", action="store_true", help="also evaluate with the planted vectors")
    parser.add_argument("--calibrate", action="store_true", help="also evaluate the guard calibrated on dev texts")
    parser.add_argument(
        "--parts",
        default="costs,table",
        help="comma-separated: costs (overhead and purge), table, sweep (monitor calibration rules)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.smoke:
        smoke()
        return
    if not (DATA / "sst-2" / "train.json").is_file():
        sys.exit(f"no data at {DATA}")

    attacks, datasets, methods = (args.attacks.split(","), args.datasets.split(","), args.methods.split(","))
    unknown = set(methods) - set(LEARNING_RATES)
    if unknown:
        sys.exit(f"unknown methods: {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    backdoors = {attack: load_backdoor(attack, args.max_seeds) for attack in attacks}
    for b in backdoors.values():
        print(f"{b.attack}: {len(b.scan.pvs)} PVs mined, {pv_recall(b)}/{len(b.planted)} planted vectors recovered")

    parts = set(args.parts.split(","))
    sections = []
    payload: dict = {"settings": vars(args)}
    if "costs" in parts:
        sections += costs(backdoors[attacks[0]], datasets[0], methods[0], args, payload)
    if "table" in parts:
        rows = [defense_row(backdoors[a], d, m, args) for a in attacks for d in datasets for m in methods]
        recovery = "\n".join(
            f"- {b.attack}: {len(b.scan.pvs)} PVs, {pv_recall(b)}/{len(b.planted)} planted recovered, "
            f"mining {sum(t.seconds for t in b.scan.trace if t.parts is None):.0f} s over {b.scan.num_seeds} seeds"
            for b in backdoors.values()
        )
        sections.append(f"## Defense (mined PVs)\n\n{recovery}\n\n{defense_table(rows)}")
        payload["rows"] = rows
    if "sweep" in parts:
        sweeps = [calibration_sweep(backdoors[a], d, m, args) for a in attacks for d in datasets for m in methods]
        sections.append(
            f"## Monitor calibration rules over {len(sweeps)} cells ({CALIBRATION_TEXTS} calibration texts, "
            f"{VALIDATION_TEXTS} validation sentences each)\n\n{sweep_table(sweeps)}"
        )
        payload["sweep"] = sweeps
    header = f"# Guard benchmark ({args.parts}; {time.perf_counter() - started:.0f} s this run, caches reused)"
    text = "\n\n".join([header, *sections])
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if parts == {"costs", "table"} else "-" + "-".join(sorted(parts))
    (RESULTS / f"guard{suffix}.md").write_text(text + "\n", encoding="utf-8")
    (RESULTS / f"guard{suffix}.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    print(f"results: {RESULTS / f'guard{suffix}.md'}")


if __name__ == "__main__":
    main()
