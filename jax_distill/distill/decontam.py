"""Decontamination: problems that share a word n-gram with an evaluation set are removed before any teacher call.

Text is normalised before n-grams are taken: lower case, LaTeX commands and punctuation dropped, every number
replaced by one placeholder. So a benchmark problem copied with its numbers changed ("reworded numbers") still
matches, while two problems that merely share numbers do not. A problem shorter than n words matches only an eval
problem whose whole normalised text is the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_LATEX_CMD = re.compile(r"\\[a-zA-Z]+")
_WORD = re.compile(r"[a-z]+|#")


def normalize_words(text: str) -> list[str]:
    """Lower-cased words with numbers as ``#`` and LaTeX commands / punctuation dropped."""
    text = _NUMBER.sub(" # ", _LATEX_CMD.sub(" ", text.lower()))
    return _WORD.findall(text)


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class Match:
    """Why a problem was removed: the eval set, the eval problem's row, shared n-grams, one of them as text."""

    set: str
    index: int
    shared: int
    example: str


class NgramIndex:
    """n-grams of every evaluation problem → (set, row). ``n`` words; ``min_overlap`` shared n-grams to match."""

    def __init__(self, sets: dict[str, list[str]], n: int = 10, min_overlap: int = 1):
        self.n, self.min_overlap = n, min_overlap
        self.sizes = {name: len(problems) for name, problems in sets.items()}
        self._grams: dict[tuple[str, ...], list[tuple[str, int]]] = {}
        self._short: dict[tuple[str, ...], tuple[str, int]] = {}  # eval problems shorter than n words, whole
        for name, problems in sets.items():
            for i, text in enumerate(problems):
                words = normalize_words(text)
                if len(words) < n:
                    self._short.setdefault(tuple(words), (name, i))
                for g in ngrams(words, n):
                    self._grams.setdefault(g, []).append((name, i))

    def match(self, problem: str) -> Match | None:
        """The eval problem sharing the most n-grams with ``problem`` (at least ``min_overlap``), else None."""
        words = normalize_words(problem)
        if len(words) < self.n:
            hit = self._short.get(tuple(words))
            return Match(hit[0], hit[1], 1, " ".join(words)) if hit else None
        counts: dict[tuple[str, int], int] = {}
        first: dict[tuple[str, int], tuple[str, ...]] = {}
        for g in ngrams(words, self.n):
            for where in self._grams.get(g, ()):
                counts[where] = counts.get(where, 0) + 1
                first.setdefault(where, g)
        if not counts:
            return None
        where, shared = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        if shared < self.min_overlap:
            return None
        return Match(where[0], where[1], shared, " ".join(first[where]))
