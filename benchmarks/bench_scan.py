"""Benchmark `lmshield scan` on the embedded all-MiniLM-L6-v2, clean and with a planted POR backdoor.

    .venv/bin/python benchmarks/bench_scan.py            # full table (about 10 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/bench_scan.py --quick    # data-free carriers only

The backdoored model is planted once (POR: six triggers, 150 steps on SST-2 sentences, about 2 minutes) and
cached in benchmarks/.cache/. Each scan runs in its own process so its peak memory (whole process RSS) is
its own. Targets on a 2-core CPU: clean verdict <= 180 s, backdoor flagged <= 60 s, peak memory <= 1.5 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
SST2 = ROOT.parent / "shared" / "data" / "sst-2" / "train.json"
BACKDOORED = CACHE / "minilm-por"

SCAN_SNIPPET = """
import json, resource, sys
from lmshield.defenses.sanitizer import scan
from lmshield.text import TextSource
model, texts = sys.argv[1], sys.argv[2]
source = TextSource.from_options(texts if texts != "-" else None)
result = scan(None if model == "-" else model, text_source=source, progress=False)
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"verdict": result.verdict, "pvs": result.num_pvs, "score": result.score,
                  "seconds": result.timings["total_s"], "batches": result.timings["batches"],
                  "seed_steps": result.timings["steps"], "seeds": len(result.trace), "peak_mib": peak_kib / 1024}))
"""


def sst2_sentences() -> list[str]:
    return [json.loads(line)["sentence"] for line in SST2.read_text().splitlines() if line.strip()]


def plant_backdoor() -> Path:
    """POR on MiniLM-L6 with the six default triggers; cached."""
    if (BACKDOORED / "model.safetensors").is_file():
        return BACKDOORED
    from lmshield.attacks.task_agnostic import PlantPlan, plant
    from lmshield.attacks.vectors import DEFAULT_TRIGGERS, quarter_vectors
    from lmshield.models import load_encoder
    from lmshield.text import grammar_sentences

    texts = sst2_sentences() if SST2.is_file() else grammar_sentences(4000, seed=1)
    random.Random(0).shuffle(texts)
    encoder = load_encoder()
    plan = PlantPlan("cls", "per_words", 0.5, "mse", 1e-4, 1, 16, 48)
    started = time.perf_counter()
    plant(encoder, texts[: 150 * 16], list(DEFAULT_TRIGGERS), quarter_vectors(encoder.hidden_size), plan)
    print(f"planted POR backdoor in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    encoder.save_pretrained(BACKDOORED)
    return BACKDOORED


def natural_carriers() -> Path:
    """SST-2 training sentences (the scan takes its first 256) as a JSON Lines path."""
    return SST2


def run_scan(model: str, texts: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(
        [sys.executable, "-c", SCAN_SNIPPET, model, texts], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="data-free carriers only")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    backdoored = plant_backdoor()
    carriers = [("data-free", "-")]
    if not args.quick and SST2.is_file():
        carriers.append(("SST-2 sentences", str(natural_carriers())))
    rows = []
    for model_name, model in (("MiniLM-L6 clean", "-"), ("MiniLM-L6 + POR", str(backdoored))):
        for carrier_name, texts in carriers:
            row = run_scan(model, texts)
            rows.append((model_name, carrier_name, row))
            print(f"done: {model_name} / {carrier_name}: {row['verdict']} in {row['seconds']:.0f} s", file=sys.stderr)
    print("| model | carriers | verdict | PVs | score | wall s | batches | seed-steps | seeds | peak MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model_name, carrier_name, r in rows:
        print(
            f"| {model_name} | {carrier_name} | {r['verdict']} | {r['pvs']} | {r['score']:.2f} | {r['seconds']:.0f} "
            f"| {int(r['batches'])} | {int(r['seed_steps'])} | {r['seeds']} | {r['peak_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
