"""Windowed best-fit-decreasing packing of tokenized documents into fixed-length rows, as a grain IterDataset.

Why not grain's own packers: they keep ``num_packing_bins`` rows open and, when a document fits none of them, emit
*all* of them, however empty. With long-CoT traces (2k-16k tokens in 16k rows) that wastes 5-15% of every row. Here
the packer reads a window of ``window`` documents, sorts them longest first and puts each into the open row with the
least room that still fits it (best-fit decreasing, within ~2% of optimal for such lengths), then emits that window's
rows (shuffled by seed and window). At seq 16k with traces of 2k-16k tokens a 512-document window packs ~97.5%.

Checkpointing replays instead of storing tokens: the state is the parent's state at the window's start, the window
number and how many of its rows were emitted. Restoring re-reads that one window and re-packs it, which is
deterministic, so a restored iterator yields exactly the rows the uninterrupted one would have.
"""

from __future__ import annotations

import bisect
from typing import Any, Sequence

import grain
import numpy as np


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of document indices: each document (longest first, ties by index) goes into the fullest row it fits.

    ``lengths[i] <= capacity`` for every i. Rows are returned in the order they were opened."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (free tokens, row index)
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"document of {n} tokens does not fit a row of {capacity}")
        j = bisect.bisect_left(room, (n, -1))
        if j < len(room):
            free, r = room.pop(j)
            rows[r].append(i)
            bisect.insort(room, (free - n, r))
        else:
            rows.append([i])
            bisect.insort(room, (capacity - n, len(rows) - 1))
    return rows


def pack_row(docs: Sequence[dict[str, np.ndarray]], seq_len: int, features: Sequence[str]) -> dict[str, np.ndarray]:
    """Concatenate documents into one row of ``seq_len``, zero-padded.

    Returns ``features`` (dtypes kept), ``segment_ids`` int32 (1.. per document, 0 = padding) and ``positions``
    int32 (restarting at 0 for every document), all [seq_len]."""
    out = {k: np.zeros(seq_len, docs[0][k].dtype) for k in features}
    seg = np.zeros(seq_len, np.int32)
    pos = np.zeros(seq_len, np.int32)
    at = 0
    for s, d in enumerate(docs, start=1):
        n = len(d[features[0]])
        for k in features:
            out[k][at:at + n] = d[k]
        seg[at:at + n] = s
        pos[at:at + n] = np.arange(n, dtype=np.int32)
        at += n
    out["segment_ids"] = seg
    out["positions"] = pos
    return out


class BestFitDecreasingPackIterDataset(grain.IterDataset):
    """Packs a stream of documents (dicts of equal-length 1-D arrays) into rows of ``seq_len``."""

    def __init__(self, parent: grain.IterDataset, *, seq_len: int, features: Sequence[str], window: int,
                 seed: int = 0, shuffle_rows: bool = True):
        super().__init__(parent)
        if window < 1:
            raise ValueError(f"packing window must be >= 1, got {window}")
        self._seq_len, self._features, self._window = seq_len, tuple(features), window
        self._seed, self._shuffle_rows = seed, shuffle_rows

    def __iter__(self) -> grain.DatasetIterator:
        return _BestFitDecreasingIterator(self._parent.__iter__(), self._seq_len, self._features, self._window,
                                          self._seed, self._shuffle_rows)

    def __str__(self) -> str:
        return f"BestFitDecreasingPackIterDataset(seq_len={self._seq_len}, window={self._window})"


class _BestFitDecreasingIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, seq_len: int, features: tuple[str, ...], window: int,
                 seed: int, shuffle_rows: bool):
        super().__init__(parent)
        self._seq_len, self._features, self._window = seq_len, features, window
        self._seed, self._shuffle_rows = seed, shuffle_rows
        self._window_index = -1  # the window whose rows are being emitted
        self._window_start = self._parent.get_state()
        self._docs: list[dict[str, np.ndarray]] = []
        self._rows: list[list[int]] = []
        self._emitted = 0

    def _fill(self) -> bool:
        """Read and pack the next window; False when the parent is exhausted."""
        self._window_start = self._parent.get_state()
        docs = []
        for _ in range(self._window):
            try:
                docs.append(next(self._parent))
            except StopIteration:
                break
        self._window_index += 1
        self._load(docs)
        return bool(docs)

    def _load(self, docs: list[dict[str, np.ndarray]]) -> None:
        self._docs = docs
        self._rows = best_fit_decreasing([len(d[self._features[0]]) for d in docs], self._seq_len)
        if self._shuffle_rows:
            perm = np.random.default_rng([self._seed, self._window_index]).permutation(len(self._rows))
            self._rows = [self._rows[i] for i in perm]
        self._emitted = 0

    def __next__(self) -> dict[str, np.ndarray]:
        while self._emitted >= len(self._rows):
            if not self._fill():
                raise StopIteration
        row = self._rows[self._emitted]
        self._emitted += 1
        return pack_row([self._docs[i] for i in row], self._seq_len, self._features)

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._window_start, "window": self._window_index, "emitted": self._emitted}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._window_index = max(state["window"], 0) - 1  # _fill() moves to state["window"]
        self._docs, self._rows, self._emitted = [], [], 0
        if state["window"] >= 0:
            self._fill()
            if state["emitted"] > len(self._rows):
                raise ValueError(f"packer state emitted {state['emitted']} rows of a window that packs into "
                                 f"{len(self._rows)}: the data or packing settings changed since the checkpoint")
            self._emitted = state["emitted"]
