"""Decontamination: problems that share a word n-gram with an evaluation set are removed before any teacher call.

Text is normalised before n-grams are taken: lower case, punctuation and backslashes dropped (LaTeX command names
stay as words: ``frac``, ``cdot``), every number replaced by one placeholder. So a benchmark problem copied with
its numbers changed ("reworded numbers") still matches, while two problems that merely share numbers do not. An
n-gram counts only if at least half of its words are real words (not numbers or one-letter variables): formulas
alone ("# x # # x #") are shared by unrelated problems. A problem also matches an eval problem whose whole
normalised text is the same (short problems, or ones that are all formula).

Measured on MATH-500 (tests/data/test_distill.py): with n = 13, all 250 problems of one half are found again with
every number changed; 2 of the other 250 match the first half (templated twins such as "Find the quotient / remainder
when $x^9 + 1$ is divided by $x - 1$"); n = 10 gives 12, n = 8 gives 30.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[a-z]+|#")


def normalize_words(text: str) -> list[str]:
    """Lower-cased words (LaTeX command names included) with every number as ``#``; punctuation dropped."""
    return _WORD.findall(_NUMBER.sub(" # ", text.lower()))


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    """The n-grams of ``words`` in which at least half the words are real words (2+ letters)."""
    return {g for g in (tuple(words[i:i + n]) for i in range(len(words) - n + 1))
            if sum(len(w) > 1 for w in g) * 2 >= n}


@dataclass(frozen=True)
class Match:
    """Why a problem was removed: the eval set, the eval problem's row, shared n-grams (0: the whole normalised
    text is the same), one of them (or the text) as words."""

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
        self._whole: dict[tuple[str, ...], tuple[str, int]] = {}  # every eval problem's whole normalised text
        for name, problems in sets.items():
            for i, text in enumerate(problems):
                words = normalize_words(text)
                self._whole.setdefault(tuple(words), (name, i))
                for g in ngrams(words, n):
                    self._grams.setdefault(g, []).append((name, i))

    def match(self, problem: str) -> Match | None:
        """The eval problem sharing the most n-grams with ``problem`` (at least ``min_overlap``), else None."""
        words = normalize_words(problem)
        hit = self._whole.get(tuple(words))
        if hit is not None:
            return Match(hit[0], hit[1], 0, " ".join(words))
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
