"""Text: carrier sources (data-free, files, datasets) and trigger insertion."""

from lmshield.text.grammar import grammar_sentences, vocabulary_sentences
from lmshield.text.sources import TextSource, read_records, read_texts
from lmshield.text.triggers import insert_per_words, insert_words

__all__ = [
    "TextSource",
    "grammar_sentences",
    "insert_per_words",
    "insert_words",
    "read_records",
    "read_texts",
    "vocabulary_sentences",
]
