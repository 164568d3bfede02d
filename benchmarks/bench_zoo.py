"""Build and scan a zoo of MiniLM-L6 models, then print the detection table.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_zoo.py            # 16 models, hours
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_zoo.py --smoke    # 2 tiny-budget models
    ... bench_zoo.py --executor ray [--address HOST:PORT]                                 # as Ray tasks

Both steps resume: rerun the same command after an interruption. Results: OUT/scans/detection.md,
metrics.json and roc.png (OUT defaults to benchmarks/.cache/zoo_minilm, or zoo_minilm_smoke).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent

# A smoke run of the pipeline: the original model and one POR model planted in 20 steps, one short seed each.
SMOKE = {
    "name": "zoo-minilm-smoke",
    "base_model": None,
    "text": {"generator": "grammar"},
    "models": [
        {"kind": "original"},
        {"kind": "attack", "attack": "por", "preset": "fast", "overrides": {"num_texts": 320}},
    ],
    "scan": {"preset": "fast", "overrides": {"max_seeds": 1, "num_carriers": 64, "epochs": 2}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=HERE / "zoo_minilm.yaml")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="2 models on a tiny budget: checks the pipeline only")
    parser.add_argument("--executor", default="sequential", choices=("sequential", "ray"))
    parser.add_argument("--address", default=None, help="existing Ray cluster")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    args = parser.parse_args()

    import torch

    from lmshield.cli._common import quiet_libraries
    from lmshield.zoo import build_zoo, load_spec, parse_spec, scan_zoo

    quiet_libraries()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    spec = parse_spec(SMOKE, HERE) if args.smoke else load_spec(args.spec)
    out = args.out or HERE / ".cache" / ("zoo_minilm_smoke" if args.smoke else "zoo_minilm")
    run = {"executor": args.executor, "address": args.address, "num_cpus": args.num_cpus}
    started = time.perf_counter()
    rows = build_zoo(spec, out, **run)
    built = time.perf_counter()
    print(f"built {len(rows)} models in {built - started:.0f} s -> {out}")
    for row in rows:
        if row["planted"] == "false":
            print(f"  warning: {row['model_id']} ({row['attack']}) backdoor not verified (agreement < 0.9)")
    found = scan_zoo(out, **run)
    print(found.markdown())
    print(f"scanned in {time.perf_counter() - built:.0f} s; results in {found.directory}")


if __name__ == "__main__":
    main()
