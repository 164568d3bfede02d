"""Clause splitting for PSIM's clause reading."""

from __future__ import annotations

from lmshield.text.clauses import clause_views, split_clauses


def test_clauses_end_at_punctuation_followed_by_space() -> None:
    assert split_clauses("Although it drags , the cast is fine. Go see it!  Really") == [
        "Although it drags ,",
        "the cast is fine.",
        "Go see it!",
        "Really",
    ]
    assert split_clauses("3.5 stars, no:less") == ["3.5 stars,", "no:less"]  # no space after: one word
    # full-width punctuation, which Chinese and Japanese text follow with no space
    assert split_clauses("电影很长，但是很好看。推荐！") == ["电影很长，", "但是很好看。", "推荐！"]


def test_short_and_empty_texts_are_one_clause_or_none() -> None:
    assert split_clauses("word") == ["word"]
    assert split_clauses("") == [] and split_clauses("   ") == []


def test_only_clauses_that_start_within_max_words_are_read() -> None:
    text = "a b c , d e f , g h"
    assert split_clauses(text, max_words=4) == ["a b c ,"]
    assert split_clauses(text, max_words=5) == ["a b c ,", "d e f ,"]
    assert split_clauses(text) == ["a b c ,", "d e f ,", "g h"]


def test_views_are_each_text_then_its_clauses_with_their_owner() -> None:
    views, owners = clause_views(["one", "", "x , y"])
    assert views == ["one", "", "x , y", "x ,", "y"]
    assert owners == [0, 1, 2, 2, 2]
