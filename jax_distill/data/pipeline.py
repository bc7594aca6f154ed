"""The grain input pipeline: read -> validate -> chat template -> tokenize -> mask -> overlong -> pack -> batch.

Records are read, validated and tokenized once up front on each host (so every skipped record is counted exactly,
whatever the worker layout), then a grain pipeline shuffles by (seed, epoch), packs documents into rows of
``seq_len`` (our windowed best-fit-decreasing packer by default, or grain's first-fit / best-fit), batches, and
optionally prefetches in worker processes.
Its iterator state (`get_state` / `set_state`) is a small JSON-able dict, stored in every training checkpoint, and a
restored iterator yields exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import grain
import numpy as np

from jax_distill.data.config import DataConfig
from jax_distill.data.packing import BestFitDecreasingPackIterDataset
from jax_distill.data.records import ReadReport, Trace, read_traces
from jax_distill.data.sources import host_share, list_files
from jax_distill.data.tokenize import Tokenizer

FEATURES = ("input_ids", "targets", "loss_mask")


@dataclass
class PipelineReport:
    """What the pipeline read, kept and skipped (by reason), and how well it packed."""

    read: ReadReport = field(default_factory=ReadReport)
    tokens: int = 0  # tokens of the kept documents (after truncation)
    loss_tokens: int = 0
    tokenize_seconds: float = 0.0
    packed_rows: int = 0
    packed_tokens: int = 0  # non-padding tokens in rows yielded so far

    @property
    def packing_efficiency(self) -> float | None:
        return self.packed_tokens / (self.packed_rows * self._seq_len) if self.packed_rows else None

    _seq_len: int = 1

    def as_dict(self) -> dict[str, Any]:
        d = self.read.as_dict()
        d.update(tokens=self.tokens, loss_tokens=self.loss_tokens,
                 tokens_per_second=self.tokens / self.tokenize_seconds if self.tokenize_seconds else None,
                 packing_efficiency=self.packing_efficiency)
        return d


def tokenize_traces(traces: list[Trace], tokenizer: Tokenizer, cfg: DataConfig,
                    report: PipelineReport) -> list[dict[str, np.ndarray]]:
    """One document per trace: ``input_ids`` [n], ``targets`` [n] (next token), ``loss_mask`` [n] float32.

    A document of more than ``seq_len`` tokens is truncated or dropped (``cfg.overlong``); both are counted."""
    t0 = time.perf_counter()
    docs = []
    for tr in traces:
        ids, mask = tokenizer.encode_chat(tr.messages, loss_on=cfg.loss_on)
        ids_a = np.asarray(ids, np.int32)
        doc = {"input_ids": ids_a[:-1], "targets": ids_a[1:], "loss_mask": np.asarray(mask[1:], np.float32)}
        if len(doc["input_ids"]) > cfg.seq_len:
            if cfg.overlong == "drop":
                report.read.kept -= 1
                report.read.skip("overlong", f"{tr.source}:{tr.line}", cfg.strict,
                                 f"{len(ids)} tokens > seq_len {cfg.seq_len}")
                continue
            doc = {k: v[: cfg.seq_len] for k, v in doc.items()}
            report.read.truncated += 1
        if not doc["loss_mask"].any():
            report.read.kept -= 1
            report.read.skip("no_loss_tokens", f"{tr.source}:{tr.line}", cfg.strict,
                             "no assistant tokens left to learn from")
            continue
        report.tokens += len(doc["input_ids"])
        report.loss_tokens += int(doc["loss_mask"].sum())
        docs.append(doc)
    report.tokenize_seconds += time.perf_counter() - t0
    return docs


def _finish_row(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """grain's packer output -> the model's inputs (segment ids 0 = padding; positions restart per document)."""
    seg = row["input_ids_segment_ids"].astype(np.int32)
    return {"input_ids": row["input_ids"].astype(np.int32), "targets": row["targets"].astype(np.int32),
            "loss_mask": (row["loss_mask"] * (seg > 0)).astype(np.float32), "segment_ids": seg,
            "positions": row["input_ids_positions"].astype(np.int32)}


def _pad_row(doc: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    n = len(doc["input_ids"])
    out = {k: np.pad(v, (0, seq_len - n)) for k, v in doc.items()}
    out["segment_ids"] = (np.arange(seq_len) < n).astype(np.int32)
    out["positions"] = np.where(np.arange(seq_len) < n, np.arange(seq_len), 0).astype(np.int32)
    out["loss_mask"] = out["loss_mask"].astype(np.float32)
    return out


def build_dataset(docs: list[dict[str, np.ndarray]], cfg: DataConfig, *, batch_size: int, seed: int,
                  shuffle: bool, num_epochs: int | None, drop_remainder: bool = False) -> grain.IterDataset:
    """The grain dataset of packed [batch_size, seq_len] batches over tokenized documents."""
    if not docs:
        raise ValueError(f"no usable records in {cfg.paths}: every record was skipped (see the skip report)")
    ds = grain.MapDataset.source(docs)
    if shuffle:
        ds = ds.shuffle(seed=seed)  # before repeat: a different order every epoch
    ds = ds.repeat(num_epochs)
    it = ds.to_iter_dataset()
    if cfg.packing == "none":
        it = it.map(lambda d: _pad_row(d, cfg.seq_len))
    elif cfg.packing == "best_fit_decreasing":
        it = BestFitDecreasingPackIterDataset(it, seq_len=cfg.seq_len, features=FEATURES, window=cfg.packing_window,
                                              seed=seed, shuffle_rows=shuffle)
    else:
        packer = grain.experimental.FirstFitPackIterDataset if cfg.packing == "first_fit" \
            else grain.experimental.BestFitPackIterDataset
        it = packer(it, length_struct={k: cfg.seq_len for k in FEATURES},
                    num_packing_bins=cfg.packing_bins or batch_size, seed=seed, shuffle_bins=shuffle)
        it = it.map(_finish_row)
    it = it.batch(batch_size, drop_remainder=drop_remainder)
    if cfg.worker_count > 0:
        from absl import flags

        # grain's worker processes read absl flags; a program that never called absl.app.run has not parsed them.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
    return it


def count_packed(batches) -> tuple[int, int]:
    """(rows, non-padding tokens) over packed batches: packing efficiency is tokens / (rows * seq_len)."""
    rows = real = 0
    for batch in batches:
        rows += batch["segment_ids"].shape[0]
        real += int((batch["segment_ids"] > 0).sum())
    return rows, real


class TraceIterator:
    """Iterator of host-local batches (dict of numpy arrays [batch, seq_len]) with checkpointable state."""

    def __init__(self, dataset: grain.IterDataset, report: PipelineReport, seq_len: int, batch_size: int):
        self._it = iter(dataset)
        self._report = report
        self._batch_size = batch_size
        report._seq_len = seq_len

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        short = self._batch_size - batch["segment_ids"].shape[0]
        if short > 0:  # the last batch of a finite pass: pad with empty rows (all-zero masks), never drop documents
            batch = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        self._report.packed_rows += batch["segment_ids"].shape[0] - max(short, 0)
        self._report.packed_tokens += int((batch["segment_ids"] > 0).sum())
        return batch

    def get_state(self) -> dict[str, Any]:
        return self._it.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.set_state(state)

    def report(self) -> dict[str, Any]:
        return self._report.as_dict()


def _check_not_empty(report: PipelineReport, files: list[str], strict: bool) -> None:
    """No records at all is an error; an empty file among others a warning naming it (an error when strict)."""
    from jax_distill.errors import UserError

    empty = [f for f, c in report.read.per_file.items() if c["records"] == 0]
    if files and report.read.records == 0:
        raise UserError(f"no records in the data: {', '.join(files[:3])}{' ...' if len(files) > 3 else ''} "
                        f"({'empty' if len(empty) == len(files) else 'nothing readable'})",
                        "check data.paths / --data")
    if empty and strict:
        raise UserError(f"empty data file {empty[0]} (strict)", "remove it from the paths or drop strict")
    for f in empty:
        import logging

        logging.getLogger(__name__).warning("warning: empty data file %s: no records", f)


def load_documents(cfg: DataConfig, tokenizer: Tokenizer, process_index: int = 0,
                   process_count: int = 1) -> tuple[list[dict[str, np.ndarray]], PipelineReport]:
    """This host's share of the data, read, validated and tokenized (with the skip/truncation report): its share of
    the files, or, with fewer files than hosts (a small held-out set, the tiny configs), every file and every
    ``process_count``-th record (disjoint and complete either way)."""
    files = list_files(cfg.paths)
    report = PipelineReport()
    if process_count > len(files):
        traces, report.read = read_traces(files, cfg, record_share=(process_index, process_count))
    else:
        files = host_share(files, process_index, process_count)
        traces, report.read = read_traces(files, cfg)
    _check_not_empty(report, files, cfg.strict)
    return tokenize_traces(traces, tokenizer, cfg, report), report


def build_iterator(cfg: DataConfig, tokenizer: Tokenizer, *, batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1) -> TraceIterator:
    """Training batches for this host: shuffled by seed and epoch, packed, ``cfg.num_epochs`` passes (None: forever).

    Each batch: ``input_ids``, ``targets`` int32, ``loss_mask`` float32, ``segment_ids``, ``positions`` int32,
    all [batch_size, cfg.seq_len]."""
    docs, report = load_documents(cfg, tokenizer, process_index, process_count)
    ds = build_dataset(docs, cfg, batch_size=batch_size, seed=seed, shuffle=cfg.shuffle, num_epochs=cfg.num_epochs)
    return TraceIterator(ds, report, cfg.seq_len, batch_size)


def build_eval_iterator(cfg: DataConfig, tokenizer: Tokenizer, *, batch_size: int, process_index: int = 0,
                        process_count: int = 1) -> TraceIterator:
    """One pass over held-out traces, in file order, packed; the last batch is padded, not dropped."""
    docs, report = load_documents(cfg, tokenizer, process_index, process_count)
    ds = build_dataset(docs, cfg, batch_size=batch_size, seed=0, shuffle=False, num_epochs=1)
    return TraceIterator(ds, report, cfg.seq_len, batch_size)
