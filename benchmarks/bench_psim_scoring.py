"""What PSIM's scoring costs: the whole-input reading (the release's) against the clause reading (the default).

    .venv/bin/python benchmarks/bench_psim_scoring.py                      # fits PSIM on the embedded MiniLM-L6
    .venv/bin/python benchmarks/bench_psim_scoring.py --psim runs/psim     # times a saved PSIM instead

Without ``--psim`` a PSIM is fitted (about 25 s on 2 CPU cores) on the embedded all-MiniLM-L6-v2 with 1,000
SST-2 training sentences, as the fast PSIM benchmark fits it; the scores do not matter here, only the time.
Each span then scores the first ``--count`` SST-2 test sentences and IMDB test reviews, ``--repeat`` times;
the table gives the best time, texts per second, how many views (the input and its clauses) a text gets on
average, and the time against the whole-input reading. Set OMP_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPANS = ("text", "clauses")


def best_time(score, texts: list[str], repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``score(texts)``, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        score(texts)
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--psim", type=Path, default=None, help="a saved PSIM (default: fit one)")
    parser.add_argument("--count", type=int, default=300, help="texts per dataset")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1:
        print("--count and --repeat must be at least 1", file=sys.stderr)
        return 2
    files = {name: args.data / name / "test.json" for name in ("sst-2", "imdb")}
    if not all(path.is_file() for path in files.values()) or not (args.data / "sst-2" / "train.json").is_file():
        print(f"no data at {args.data} (sst-2, imdb)", file=sys.stderr)
        return 2

    from lmshield.defenses.psim import PSIM
    from lmshield.text.clauses import clause_views
    from lmshield.tuning import read_labelled

    if args.psim is not None:
        psim = PSIM.from_pretrained(args.psim, device=args.device, progress=False)
    else:
        train = read_labelled(args.data / "sst-2" / "train.json").head(1000).texts
        psim = PSIM(max_length=64, device=args.device, progress=False).fit(None, train, 2)
    print(f"| data | span | texts | views per text | best of {args.repeat} (s) | texts/s | x whole input |")
    print("|---|---|---|---|---|---|---|")
    for name, path in files.items():
        texts = read_labelled(path).head(args.count).texts
        whole = None
        for span in SPANS:
            psim.set_params(span=span)
            seconds = best_time(psim.score, texts, args.repeat)
            whole = whole or seconds
            views = len(clause_views(texts, psim.max_length)[0]) if span == "clauses" else len(texts)
            print(
                f"| {name} | {span} | {len(texts)} | {views / len(texts):.2f} | {seconds:.2f} | "
                f"{len(texts) / seconds:.0f} | {seconds / whole:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
