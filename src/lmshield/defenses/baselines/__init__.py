"""Baseline defenses PSIM is compared with: paraphrase (precomputed), STRIP and ONION."""

from lmshield.defenses.baselines.onion import ONION, load_causal_lm
from lmshield.defenses.baselines.paraphrase import ParaphrasedSet, load_paraphrased
from lmshield.defenses.baselines.strip import STRIP

__all__ = ["ONION", "STRIP", "ParaphrasedSet", "load_causal_lm", "load_paraphrased"]
