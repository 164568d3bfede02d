"""Benchmark the LMSanitator guard on the embedded all-MiniLM-L6-v2 with a planted POR backdoor.

    .venv/bin/python benchmarks/bench_guard.py            # full run (CPU: roughly 10-15 minutes)
    .venv/bin/python benchmarks/bench_guard.py --smoke    # tiny encoder and tiny task, seconds

Steps: plant POR (six triggers, 150 steps on SST-2 sentences, about 2 minutes; cached in
benchmarks/.cache/minilm-por, the same model bench_scan.py uses), prefix-tune (P-tuning v2, [CLS] head) on
an SST-2 subset (cached), scan the encoder (search mode, so several PVs; cached), then run the ASR protocol
on SST-2 test sentences with the guard built from the mined PVs and, for reference, from the planted
vectors themselves (the guard's ceiling, independent of how well the scan recovered them).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_scan import plant_backdoor  # noqa: E402  (one cached POR model for every benchmark)

CACHE = ROOT / "benchmarks" / ".cache"
SST2 = ROOT.parent / "shared" / "data" / "sst-2"


def tuned_classifier(model: Path, args: argparse.Namespace):
    from lmshield.tuning import TunedClassifier, TuningConfig, read_labelled, tune

    out = CACHE / f"minilm-por-prefix-sst2-{args.train_size}-{args.epochs}ep"
    if (out / "tuning.json").is_file():
        return TunedClassifier.from_pretrained(out), json.loads((out / "training.json").read_text())
    train = read_labelled(SST2 / "train.json")
    train = train.take(random.Random(0).sample(range(len(train)), args.train_size))
    dev = read_labelled(SST2 / "dev.json", label_names=train.label_names).head(args.dev_size)
    config = TuningConfig(method="prefix", epochs=args.epochs, lr=args.lr, max_length=64)
    started = time.perf_counter()
    result = tune(str(model), train, dev, config, out_dir=out)
    print(f"prefix-tuned in {time.perf_counter() - started:.0f} s: dev {result.dev_accuracy:.3f}", file=sys.stderr)
    return result.classifier, result.to_dict()


def mined_pvs(model: Path, args: argparse.Namespace):
    from lmshield.defenses.sanitizer import SanitizerConfig, ScanResult, scan

    out = CACHE / f"minilm-por-scan-search-{args.max_seeds}"
    if (out / "scan.json").is_file():
        return ScanResult.from_pretrained(out)
    config = SanitizerConfig(mode="search", max_seeds=args.max_seeds)
    return scan(str(model), config, out_dir=out)


def test_split(limit: int):
    from lmshield.tuning import read_labelled

    test = read_labelled(SST2 / "test.json")
    return test.take(sorted(random.Random(1).sample(range(len(test)), min(limit, len(test)))))


def smoke() -> None:
    """The whole pipeline on a tiny planted BERT and a tiny 3-class task (a few seconds)."""
    sys.path.insert(0, str(ROOT))
    from tests.tiny_pairs import make_pair
    from tests.tuning.helpers import tiny_task

    from lmshield.attacks.vectors import DEFAULT_TRIGGERS
    from lmshield.defenses.sanitizer import Guard, SanitizerConfig, scan
    from lmshield.evaluation.guard_eval import evaluate_guard
    from lmshield.tuning import TuningConfig, tune

    _, backdoored, vectors = make_pair("bert")
    config = TuningConfig(method="prefix", epochs=5, batch_size=16, max_length=32, lr=3e-2)
    classifier = tune(backdoored, tiny_task(240, 1), tiny_task(90, 2), config, progress=False).classifier
    result = scan(backdoored, SanitizerConfig(lr=2e-3, max_seeds=8, mode="search"), progress=False)
    test = tiny_task(60, 3)
    for name, pvs in (("mined PVs", result.pvs), ("planted vectors", vectors)):
        report = evaluate_guard(Guard(classifier, pvs), test.texts, test.labels, list(DEFAULT_TRIGGERS))
        print(f"\n## smoke: guard with {name} ({len(pvs)})\n{report.table()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny encoder and task, seconds")
    parser.add_argument("--train-size", type=int, default=2000, help="SST-2 training sentences")
    parser.add_argument("--dev-size", type=int, default=400, help="SST-2 dev sentences for the best epoch")
    parser.add_argument("--test-size", type=int, default=400, help="SST-2 test sentences for the ASR protocol")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--max-seeds", type=int, default=8, help="scan seeds (search mode)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "guard.json")
    args = parser.parse_args()
    if args.smoke:
        smoke()
        return
    from lmshield.attacks.vectors import DEFAULT_TRIGGERS, quarter_vectors
    from lmshield.defenses.sanitizer import Guard
    from lmshield.evaluation.guard_eval import evaluate_guard

    CACHE.mkdir(parents=True, exist_ok=True)
    model = plant_backdoor()
    classifier, training = tuned_classifier(model, args)
    scan_result = mined_pvs(model, args)
    test = test_split(args.test_size)
    reports = {}
    for name, pvs in (("mined", scan_result.pvs), ("planted", quarter_vectors(classifier.hidden_size))):
        if len(pvs) == 0:
            print(f"\n## guard with {name} PVs: none found, skipped")
            continue
        guard = Guard(classifier, pvs, progress=False)
        reports[name] = evaluate_guard(guard, test.texts, test.labels, list(DEFAULT_TRIGGERS), seed=0)
        print(f"\n## guard with {name} PVs ({len(pvs)})\n{reports[name].table()}")
    print(f"\nprefix tuning: dev accuracy {training['dev_accuracy']:.3f}; scan: {scan_result.summary()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"training": training, "scan": scan_result.summary(), **{k: r.to_dict() for k, r in reports.items()}}
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
