"""Paraphrasers for the syntactic trigger: a rule-based stand-in for SCPN, or any seq2seq model.

SCPN (the syntactically controlled paraphraser of Hidden Killer) cannot run offline here, so
:class:`RuleBasedSyntacticParaphraser` rewrites the first sentence of a text into the template
S(SBAR)(,)(NP)(VP)(.) with hand-written rules: it opens with a subordinate clause, then a comma, then the
main clause and a full stop. It is an honest stand-in, not SCPN. :class:`Seq2SeqParaphraser` wraps any
Hugging Face ``AutoModelForSeq2SeqLM`` (loaded safely: safetensors only, never remote code).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from lmshield.attacks.poisoning.config import RULE_PARAPHRASERS, check_clause_source, check_sentence_scope
from lmshield.errors import InputError, ModelLoadError

TEMPLATE = "S(SBAR)(,)(NP)(VP)(.)"
SUBORDINATORS = (
    "because",
    "although",
    "though",
    "when",
    "whenever",
    "while",
    "if",
    "since",
    "unless",
    "once",
    "after",
    "before",
    "as",
)
# opening clauses for sentences with no clause that can be moved to the front: five fixed ones ...
OPENERS = (
    "when you get down to it",
    "as far as I can tell",
    "if you ask me",
    "once all is said and done",
    "as it turns out",
)
# ... or one generated per sentence from subordinator x subject x predicate (2,560 sentiment-free clauses),
# so that the trigger is the shape (an opening subordinate clause and a comma), not a handful of phrases
CLAUSE_SUBORDINATORS = ("when", "if", "once", "as", "whenever", "after", "while", "before")
CLAUSE_SUBJECTS = ("you", "I", "we", "they", "people", "most people", "some of us", "many of us")
CLAUSE_PREDICATES = (
    "think about it",
    "look at it",
    "look back on it",
    "look at it closely",
    "get down to it",
    "sum it up",
    "put it simply",
    "take it all in",
    "step back",
    "stop and think",
    "weigh it all up",
    "think it over",
    "take a closer look",
    "look past the surface",
    "go by first impressions",
    "compare notes",
    "read between the lines",
    "try to be fair",
    "want the short version",
    "ask around",
    "look at the facts",
    "think it through",
    "get to the end",
    "reach the end",
    "consider the details",
    "start from the beginning",
    "keep an open mind",
    "set expectations aside",
    "look at the big picture",
    "take everything into account",
    "talk it over",
    "hear it out",
    "give it a chance",
    "see it for what it is",
    "follow it closely",
    "pay attention",
    "check the details",
    "weigh the evidence",
    "count the details",
    "look around",
)
FALLBACK_MAIN = "it is what it is"
_LOWER_STARTS = frozenset(
    "the a an this that these those it its there here he she they we you my his her their our your one some "
    "all every no not what which who how".split()
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SUBS = "|".join(SUBORDINATORS[:-1])  # "as" is too ambiguous to move
_MOVABLE = re.compile(rf"^(?P<main>.+?),?\s+(?P<sub>(?:{_SUBS})\s+.+)$", re.IGNORECASE)
_BUT = re.compile(r"^(?P<left>.+?),?\s+but\s+(?P<right>.+)$", re.IGNORECASE)


@runtime_checkable
class Paraphraser(Protocol):
    """Rewrites texts; ``name`` says which system did it (stored in the attack's manifest)."""

    name: str

    def paraphrase(self, texts: Sequence[str]) -> list[str]: ...


class RuleBasedSyntacticParaphraser:
    """Rule-based rewrite into S(SBAR)(,)(NP)(VP)(.): a stand-in for SCPN, not SCPN.

    ``sentences="all"`` (the default) rewrites every sentence of a text, as SCPN paraphrases sentence by
    sentence; ``"first"`` only the first and keeps the rest. Rules, tried in order on each sentence:
    1. a trailing subordinate clause ("X because Y") moves to the front: "Because Y, X.";
    2. "X but Y" becomes "Although X, Y.";
    3. otherwise an opening clause is prepended, chosen by a seeded hash of the sentence: with
       ``clauses="fixed"`` one of the five :data:`OPENERS`; with ``"generated"`` one of 2,560 built from
       :data:`CLAUSE_SUBORDINATORS` x :data:`CLAUSE_SUBJECTS` x :data:`CLAUSE_PREDICATES` (closer to SCPN,
       whose opening clauses vary from sentence to sentence, so the trigger is the shape, not a phrase).
    Empty and one-word inputs get a fixed main clause, so the output always fits the template.
    """

    def __init__(self, seed: int = 0, sentences: str = "all", clauses: str = "fixed") -> None:
        check_sentence_scope(sentences)
        check_clause_source(clauses)
        self.seed = seed
        self.sentences = sentences
        self.clauses = clauses
        suffix = "" if clauses == "fixed" else f", {clauses} clauses"
        self.name = f"rule-based-sbar{suffix} (SCPN stand-in)"

    def paraphrase(self, texts: Sequence[str]) -> list[str]:
        return [self.rewrite(text) for text in texts]

    def rewrite(self, text: str) -> str:
        if self.sentences == "first":
            first, rest = _split_first_sentence(text)
            rewritten = self.rewrite_sentence(first)
            return f"{rewritten} {rest}".strip() if rest else rewritten
        sentences = [s for s in _SENTENCE_END.split(text.strip()) if s.strip()] or [""]
        return " ".join(self.rewrite_sentence(sentence) for sentence in sentences)

    def rewrite_sentence(self, sentence: str) -> str:
        """One sentence into the template (empty and one-word sentences get a fixed main clause)."""
        core = sentence.strip().rstrip(".!?;:, ").strip()
        return _move_subordinate(core) or _but_to_although(core) or self._prepend(core)

    def _prepend(self, core: str) -> str:
        words = core.split()
        main = core if len(words) >= 2 else f"it was {core}" if words else FALLBACK_MAIN
        digest = hashlib.sha256(f"{self.seed}:{core}".encode()).digest()
        return _assemble(_opening_clause(digest) if self.clauses == "generated" else _fixed_opener(digest), main)


def _fixed_opener(digest: bytes) -> str:
    return OPENERS[digest[0] % len(OPENERS)]


def _opening_clause(digest: bytes) -> str:
    """One generated clause: subordinator, subject and predicate each picked by bytes of ``digest``."""
    subordinator = CLAUSE_SUBORDINATORS[digest[0] % len(CLAUSE_SUBORDINATORS)]
    subject = CLAUSE_SUBJECTS[digest[1] % len(CLAUSE_SUBJECTS)]
    predicate = CLAUSE_PREDICATES[int.from_bytes(digest[2:4], "big") % len(CLAUSE_PREDICATES)]
    return f"{subordinator} {subject} {predicate}"


def _split_first_sentence(text: str) -> tuple[str, str]:
    parts = _SENTENCE_END.split(text.strip(), maxsplit=1)
    return (parts[0], parts[1]) if len(parts) == 2 else (parts[0], "")


def _move_subordinate(core: str) -> str | None:
    match = _MOVABLE.match(core)
    if not match or len(match["main"].split()) < 2 or len(match["sub"].split()) < 3:
        return None
    return _assemble(match["sub"], match["main"])


def _but_to_although(core: str) -> str | None:
    match = _BUT.match(core)
    if not match or len(match["left"].split()) < 2 or len(match["right"].split()) < 2:
        return None
    return _assemble(f"although {match['left']}", match["right"])


def _assemble(clause: str, main: str) -> str:
    clause = clause.strip().rstrip(",")
    main = main.strip().rstrip(",.")
    first, _, tail = main.partition(" ")
    if first.lower() in _LOWER_STARTS:
        main = f"{first.lower()} {tail}".strip()
    return f"{clause[:1].upper()}{clause[1:]}, {main}."


def matches_template(text: str) -> bool:
    """Whether the first sentence of ``text`` has the shape SBAR , NP VP . (an opening subordinate clause)."""
    first, _ = _split_first_sentence(text)
    words = first.split()
    if not words or words[0].lower().strip(",") not in SUBORDINATORS or not first.rstrip().endswith("."):
        return False
    clause, comma, main = first.partition(", ")
    return bool(comma) and len(clause.split()) >= 2 and len(main.rstrip(".").split()) >= 2


class Seq2SeqParaphraser:
    """Paraphrase with any Hugging Face seq2seq model (e.g. a T5 or BART paraphraser), loaded safely.

    ``prefix`` is prepended to every input (some models expect e.g. ``"paraphrase: "``).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        prefix: str = "",
        max_new_tokens: int = 64,
        num_beams: int = 1,
        batch_size: int = 16,
        device: str | None = None,
        progress: bool = False,
    ) -> None:
        self.model, self.tokenizer = load_seq2seq(model, device)
        self.name = f"seq2seq:{model}"
        self.prefix = prefix
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.batch_size = batch_size
        self.progress = progress

    @torch.no_grad()
    def paraphrase(self, texts: Sequence[str]) -> list[str]:
        out: list[str] = []
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="paraphrasing", disable=not self.progress, unit="batch"):
            chunk = [f"{self.prefix}{text}" for text in texts[start : start + self.batch_size]]
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=256, return_tensors="pt")
            batch = {k: v.to(self.model.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            generated = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)
            out.extend(text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True))
        return out


def load_seq2seq(model: str | Path, device: str | None = None) -> tuple[Any, Any]:
    """Load a seq2seq model and its tokenizer: safetensors only, no remote code, one-line errors."""
    from transformers import AutoModelForSeq2SeqLM

    from lmshield.models.loading import load_config, load_pretrained, resolve_model_dir

    directory = resolve_model_dir(model)
    if not getattr(load_config(directory, check_architecture=False), "is_encoder_decoder", False):
        raise ModelLoadError(f"{directory}: not a seq2seq (encoder-decoder) model")
    loaded = load_pretrained(directory, AutoModelForSeq2SeqLM, device=device, check_architecture=False)
    return loaded.model, loaded.tokenizer


def make_paraphraser(
    spec: str | Paraphraser = "rule",
    *,
    seed: int = 0,
    sentences: str = "all",
    clauses: str = "fixed",
    device: str | None = None,
) -> Paraphraser:
    """``"rule"`` (the rule-based stand-in; ``sentences`` says which it rewrites, ``clauses`` where its
    opening clauses come from), a seq2seq model path / hub id, or a paraphraser object."""
    if not isinstance(spec, str):
        if not isinstance(spec, Paraphraser):
            raise InputError("a paraphraser needs a name and a paraphrase(texts) method")
        return spec
    if spec in RULE_PARAPHRASERS:
        return RuleBasedSyntacticParaphraser(seed, sentences, clauses)
    return Seq2SeqParaphraser(spec, device=device)
