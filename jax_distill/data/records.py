"""Reading and validating trace records, with every skipped record counted by reason (never silently dropped)."""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

from jax_distill.answers import BOX_OPEN
from jax_distill.data.config import DataConfig
from jax_distill.data.sources import read_bytes



class BadRecordError(ValueError):
    """A bad record in strict mode; the message names the file, the line and the field."""


@dataclass
class Trace:
    """One validated conversation: messages in chat form plus provenance."""

    messages: list[dict[str, str]]
    answer: str | None
    source: str
    line: int
    id: str | None = None


@dataclass
class ReadReport:
    """records = kept + sum(skipped.values()) always holds."""

    records: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated: int = 0
    per_file: dict[str, dict[str, int]] = field(default_factory=dict)

    def skip(self, reason: str, where: str, strict: bool, detail: str) -> None:
        if strict:
            raise BadRecordError(f"{where}: {detail}")
        self.skipped[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "kept": self.kept, "skipped": dict(sorted(self.skipped.items())),
                "truncated": self.truncated, "per_file": self.per_file}


def _first(rec: dict[str, Any], names: list[str]) -> tuple[str | None, Any]:
    for n in names:
        if n in rec:
            return n, rec[n]
    return None, None


def to_trace(rec: Any, cfg: DataConfig, where: str, report: ReadReport, line: int, source: str) -> Trace | None:
    """Validate one parsed record; returns None (and counts the reason) when it is unusable."""
    if not isinstance(rec, dict):
        report.skip("not_an_object", where, cfg.strict, f"expected a JSON object, got {type(rec).__name__}")
        return None
    answer = rec.get(cfg.answer_field)
    if cfg.messages_field in rec:
        msgs = rec[cfg.messages_field]
        ok = isinstance(msgs, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                            and isinstance(m.get("content"), str) for m in msgs)
        if not ok:
            report.skip("wrong_type", where, cfg.strict,
                        f"field '{cfg.messages_field}' must be a list of {{role, content}} strings")
            return None
        if not msgs or msgs[-1]["role"] != "assistant":
            report.skip("missing_field", where, cfg.strict, f"field '{cfg.messages_field}' has no final assistant turn")
            return None
        response = msgs[-1]["content"]
        messages = [dict(role=m["role"], content=m["content"]) for m in msgs]
    else:
        pname, prompt = _first(rec, cfg.prompt_fields)
        rname, response = _first(rec, cfg.response_fields)
        if pname is None or rname is None:
            missing = cfg.prompt_fields if pname is None else cfg.response_fields
            report.skip("missing_field", where, cfg.strict, f"missing field: one of {missing}")
            return None
        for name, value in ((pname, prompt), (rname, response)):
            if not isinstance(value, str):
                report.skip("wrong_type", where, cfg.strict,
                            f"field '{name}' must be a string, got {type(value).__name__}")
                return None
        messages = [{"role": "user", "content": cfg.prompt_template.format(problem=prompt)},
                    {"role": "assistant", "content": response}]
    if cfg.system_prompt is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": cfg.system_prompt}] + messages
    if not response.strip():
        report.skip("empty_response", where, cfg.strict, "field 'response' is empty")
        return None
    if cfg.require_boxed and not BOX_OPEN.search(response):
        report.skip("no_boxed_answer", where, cfg.strict, "response has no \\boxed{} answer")
        return None
    return Trace(messages, None if answer is None else str(answer), source, line,
                 None if rec.get("id") is None else str(rec.get("id")))


def _jsonl_records(url: str, data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, parsed object or None, error reason) for each non-blank line."""
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield n, None, "invalid_utf8"
            continue
        try:
            yield n, json.loads(text), None
        except json.JSONDecodeError:
            yield n, None, "malformed_json"


def _parquet_records(data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    for n, row in enumerate(table.to_pylist(), start=1):
        yield n, row, None


def read_traces(files: list[str], cfg: DataConfig, report: ReadReport | None = None,
                record_share: tuple[int, int] | None = None) -> tuple[list[Trace], ReadReport]:
    """Read and validate every record of ``files`` (in order). ``record_share=(i, n)``: only the records whose
    position over all the files is i modulo n (one host's share when there are fewer files than hosts); the report
    then counts that share only."""
    report = report or ReadReport()
    traces: list[Trace] = []
    position = 0
    for url in files:
        before = (report.records, report.kept)
        fmt = cfg.format
        if fmt == "auto":
            fmt = "parquet" if url.endswith(".parquet") else "jsonl"
        data = read_bytes(url)
        rows = _parquet_records(data) if fmt == "parquet" else _jsonl_records(url, data)
        for line, rec, error in rows:
            position += 1
            if record_share is not None and (position - 1) % record_share[1] != record_share[0]:
                continue
            report.records += 1
            where = f"{url}:{line}"
            if error is not None:
                report.skip(error, where, cfg.strict, "invalid UTF-8" if error == "invalid_utf8" else "malformed JSON")
                continue
            trace = to_trace(rec, cfg, where, report, line, url)
            if trace is not None:
                traces.append(trace)
                report.kept += 1
        n, k = report.records - before[0], report.kept - before[1]
        report.per_file[url] = {"records": n, "kept": k, "skipped": n - k}
    return traces, report
