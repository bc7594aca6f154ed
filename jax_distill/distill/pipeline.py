"""The distillation run: problems → teacher samples → grade → filters → sharded trace JSONL → distill_report.json.

Readable top to bottom: `load_problems` (the `data reformat` filters, then decontamination and duplicate problems),
`distill` (shard by shard: `sample`, `judge`, `write_shard`), `summarize`. Every problem and every sample ends in
exactly one bucket: kept, or a named reason (``problems = sampled + sum(skipped)``, ``samples = kept +
sum(rejected)``).

Shards are the unit of atomicity and of resume: shard i is ``traces-0000i.jsonl`` plus ``traces-0000i.meta.json``
(its problems, counts and token usage), each written whole (a local temp file renamed, or one object upload); the
meta file is the commit mark, written last. A rerun reads the metas, skips their problems and deletes a traces file
whose meta never came (a crash in between). Teacher responses are cached as they arrive, so the problems of an
unfinished shard cost nothing the second time.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from jax_distill.answers import BOX_OPEN, extract_boxed, is_correct
from jax_distill.config import to_dict
from jax_distill.data.reformat import asks_for_proof, load_problem_set, needs_figure
from jax_distill.data.tokenize import Tokenizer
from jax_distill.distill.config import DistillConfig
from jax_distill.distill.decontam import NgramIndex, normalize_words
from jax_distill.distill.teacher import Completion, Request, ResponseCache, Teacher
from jax_distill.paths import as_path, is_remote, write_atomic

log = logging.getLogger("jax_distill.distill")

REPORT = "distill_report.json"
_SHARD = re.compile(r"traces-(\d{5})\.(jsonl|meta\.json)$")


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str
    source: str


# ------------------------------------------------------------------------------------------------------ problems


def _pick(rec: dict[str, Any], names: Iterable[str]) -> Any:
    for n in names:
        if rec.get(n) not in (None, ""):
            return rec[n]
    return None


def read_rows(spec: str, *, split: str = "train", name: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows of a problem set: gs:// (or any fsspec URL) JSON lines / Parquet, else `data reformat`'s loader (a hub
    dataset through `datasets`, or local files)."""
    if not is_remote(spec):
        yield from load_problem_set(spec, split=split, name=name)
        return
    from jax_distill.data.sources import list_files, read_bytes

    for url in list_files([spec]):
        data = read_bytes(url)
        if url.endswith(".parquet"):
            import pyarrow.parquet as pq

            yield from pq.read_table(io.BytesIO(data)).to_pylist()
        else:
            for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{url}:{n}: malformed JSON: {err}") from None


def load_problems(rows: Iterable[dict[str, Any]], cfg: DistillConfig, source: str,
                  index: NgramIndex | None = None) -> tuple[list[Problem], dict[str, Any]]:
    """Problems worth sampling, and what was removed: ``{"records", "skipped": {reason: n}, "contaminated": [...]}``.
    Reasons: ``missing_field``, ``needs_figure``, ``proof``, ``no_answer`` (as `data reformat`), ``contaminated``
    (an n-gram shared with an evaluation set), ``duplicate_problem`` (same normalised text and answer as an earlier
    row), ``duplicate_id``."""
    skipped: Counter = Counter()
    removed: list[dict[str, Any]] = []
    seen: set[str] = set()
    ids: set[str] = set()
    out: list[Problem] = []
    records = 0
    for i, rec in enumerate(rows):
        records += 1
        if cfg.limit is not None and records > cfg.limit:
            records -= 1
            break
        problem = _pick(rec, cfg.problem_fields)
        if not isinstance(problem, str) or not problem.strip():
            skipped["missing_field"] += 1
            continue
        if needs_figure(problem):
            skipped["needs_figure"] += 1
            continue
        if asks_for_proof(problem):
            skipped["proof"] += 1
            continue
        answer = _pick(rec, cfg.answer_fields)
        if answer is None:
            solution = _pick(rec, cfg.solution_fields)
            answer = extract_boxed(solution) if isinstance(solution, str) else None
        answer = str(answer).strip() if answer is not None else ""
        if not answer:
            skipped["no_answer"] += 1
            continue
        rid = _pick(rec, cfg.id_fields)
        pid = str(rid) if rid is not None else f"{source}:{i}"
        if index is not None:
            hit = index.match(problem)
            if hit is not None:
                skipped["contaminated"] += 1
                removed.append({"id": pid, "set": hit.set, "index": hit.index, "shared_ngrams": hit.shared,
                                "ngram": hit.example})
                continue
        key = hashlib.sha1(json.dumps([normalize_words(problem), answer]).encode()).hexdigest()
        if key in seen:
            skipped["duplicate_problem"] += 1
            continue
        if pid in ids:
            skipped["duplicate_id"] += 1
            continue
        seen.add(key)
        ids.add(pid)
        out.append(Problem(pid, problem, answer, source))
    return out, {"records": records, "skipped": dict(sorted(skipped.items())), "contaminated": removed}


# ------------------------------------------------------------------------------------------------------ sampling


def messages(cfg: DistillConfig, problem: str) -> tuple[tuple[str, str], ...]:
    user = cfg.teacher.prompt_template.format(problem=problem)
    sys_turn = cfg.teacher.system_prompt
    return ((("system", sys_turn),) if sys_turn else ()) + (("user", user),)


@dataclass
class RunStats:
    """What this invocation did (the dataset totals come from the shard metas)."""

    requests: int = 0
    cache_hits: int = 0
    failed: int = 0
    paid: Counter = field(default_factory=Counter)  # prompt/completion/reasoning tokens of fresh responses
    errors: list[str] = field(default_factory=list)


def sample(problems: Sequence[Problem], cfg: DistillConfig, teacher: Teacher, cache: ResponseCache,
           stats: RunStats) -> list[list[Completion | BaseException]]:
    """``cfg.samples`` completions per problem: cached ones from ``cache``, the rest from ``teacher`` (each cached
    as soon as it arrives)."""
    reqs = [Request(messages(cfg, p.problem), k) for p in problems for k in range(cfg.samples)]
    keys = [cache.key(teacher.cache_id, r) for r in reqs]
    results: list[Completion | BaseException | None] = [cache.get(k) for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    stats.cache_hits += len(reqs) - len(todo)
    stats.requests += len(todo)
    if todo:
        def done(j: int, c: Completion) -> None:
            cache.put(keys[todo[j]], c)

        fresh = teacher.complete([reqs[i] for i in todo], on_done=done)
        for i, c in zip(todo, fresh):
            results[i] = c
            if isinstance(c, Completion):
                stats.paid.update(prompt=c.prompt_tokens, completion=c.completion_tokens,
                                  reasoning=c.reasoning_tokens)
            else:
                stats.failed += 1
                stats.errors.append(f"{problems[i // cfg.samples].id} sample {i % cfg.samples}: "
                                    f"{type(c).__name__}: {c}")
    n = cfg.samples
    return [results[j * n:(j + 1) * n] for j in range(len(problems))]  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------------- judging


def response_text(c: Completion, reasoning: str) -> str:
    """The trace the student learns: the reasoning (when the API returned it apart) in <think> tags, then the
    answer."""
    if c.reasoning and reasoning == "think_tags":
        return f"<think>\n{c.reasoning.strip()}\n</think>\n\n{c.text.strip()}"
    return c.text.strip()


def chars_after_last_box(text: str) -> int:
    """Characters after the closing brace of the last ``\\boxed{`` (the whole text's length if none closes)."""
    last = None
    for last in BOX_OPEN.finditer(text):
        pass
    if last is None:
        return len(text)
    depth, j = 1, last.end()
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return len(text) if depth else len(text[j:].strip(" \t\n$.\\]):"))


def shingles(text: str, n: int) -> set[int]:
    words = text.split()
    return {hash(tuple(words[i:i + n])) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / max(1, len(a | b))


def judge(p: Problem, outs: Sequence[Completion], cfg: DistillConfig, tok: Tokenizer, seen: set[str],
          teacher_name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Grade one problem's samples and apply the filters in order; returns (kept trace records, the problem's
    outcome: samples, correct, pass_rate, rejected by reason, kept). ``seen``: exact-duplicate hashes of every
    trace kept so far (updated)."""
    f = cfg.filters
    rejected: Counter = Counter()
    graded: list[tuple[int, Completion, str, int]] = []
    correct = 0
    for k, c in enumerate(outs):
        if c.finish_reason == "length" and f.drop_truncated:
            rejected["truncated"] += 1
            continue
        boxed = extract_boxed(c.text)
        if boxed is None:
            rejected["no_boxed_answer"] += 1
            continue
        # Graded in this (main) thread: math_verify's timeouts use signals.
        if not is_correct(boxed, p.answer, "math"):
            rejected["wrong_answer"] += 1
            continue
        correct += 1
        if f.require_final_box and chars_after_last_box(c.text) > f.tail_chars:
            rejected["box_not_final"] += 1
            continue
        text = response_text(c, cfg.teacher.reasoning)
        n_tok = len(tok.encode(text))
        if n_tok < f.min_tokens:
            rejected["too_short"] += 1
            continue
        if n_tok > f.max_tokens:
            rejected["too_long"] += 1
            continue
        graded.append((k, c, text, n_tok))
    kept: list[dict[str, Any]] = []
    kept_shingles: list[set[int]] = []
    limit = {"all": len(outs), "first": 1, "distinct": cfg.max_per_problem}[cfg.keep]
    pass_rate = correct / len(outs) if outs else 0.0
    for k, c, text, n_tok in graded:
        h = hashlib.sha1(" ".join(text.split()).encode()).hexdigest()
        if h in seen:
            rejected["duplicate"] += 1
            continue
        sh = shingles(text, f.shingle)
        if f.near_duplicate < 1.0 and any(jaccard(sh, o) >= f.near_duplicate for o in kept_shingles):
            rejected["near_duplicate"] += 1
            continue
        if len(kept) >= limit:
            rejected["over_keep_limit"] += 1
            continue
        seen.add(h)
        kept_shingles.append(sh)
        kept.append({"id": f"{p.id}#{k}", "problem_id": p.id, "source": p.source, "problem": p.problem,
                     "response": text, "answer": p.answer, "pass_rate": pass_rate,
                     "difficulty": round(1.0 - pass_rate, 6), "samples": len(outs), "correct": correct,
                     "sample": k, "teacher": teacher_name, "finish_reason": c.finish_reason, "tokens": n_tok,
                     "sha1": h})
    outcome = {"id": p.id, "samples": len(outs), "correct": correct, "pass_rate": pass_rate, "kept": len(kept),
               "rejected": dict(rejected),
               "usage": [sum(c.prompt_tokens for c in outs), sum(c.completion_tokens for c in outs),
                         sum(c.reasoning_tokens for c in outs)]}
    return kept, outcome


# ------------------------------------------------------------------------------------------------------- shards


def shard_name(i: int) -> str:
    return f"traces-{i:05d}"


def read_state(out: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The committed shards' metas (in order) and the orphan traces files (written, meta never committed)."""
    root = as_path(out)
    if not root.exists():
        return [], []
    metas, traces = {}, {}
    for f in root.iterdir():
        m = _SHARD.match(f.name)
        if m:
            (metas if m.group(2) == "meta.json" else traces)[int(m.group(1))] = f
    return ([json.loads(metas[i].read_text()) for i in sorted(metas)],
            [str(traces[i]) for i in sorted(traces) if i not in metas])


def write_shard(out: str, index: int, records: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Traces first, then the meta (the commit mark), each file written whole."""
    root = as_path(out)
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    name = shard_name(index)
    write_atomic(root / f"{name}.jsonl", payload)
    meta = {**meta, "index": index, "file": f"{name}.jsonl", "traces": len(records),
            "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    write_atomic(root / f"{name}.meta.json", (json.dumps(meta) + "\n").encode())
    return meta


# ---------------------------------------------------------------------------------------------------------- run


def distill(problems: Sequence[Problem], cfg: DistillConfig, teacher: Teacher, tok: Tokenizer,
            cache: ResponseCache, *, teacher_name: str, progress: bool = False
            ) -> tuple[list[dict[str, Any]], RunStats, list[str]]:
    """Sample, judge and write every problem not already in a committed shard of ``cfg.out``. Returns (all committed
    shard metas, this run's stats, orphan traces files removed). A problem with a failed request is left for the
    next run (its successful samples are cached)."""
    metas, orphans = read_state(cfg.out)
    # A shard is only comparable with shards of the same teacher, sampling and grading policy.
    recipe = {"teacher": teacher.cache_id, "samples": cfg.samples, "keep": cfg.keep,
              "max_per_problem": cfg.max_per_problem, "filters": to_dict(cfg.filters)}
    for m in metas:
        old = m.get("recipe") or {}
        diff = {k: f"{old.get(k)!r} there, {v!r} now" for k, v in recipe.items() if old.get(k) != v}
        if diff:
            from jax_distill.errors import UserError

            raise UserError(f"{cfg.out} holds {m['file']}, made with other settings ({diff})",
                            "resume with the same settings, or write to a new --out")
    for path in orphans:
        log.warning("removing %s: its shard was never committed (a crash between its two writes)", path)
        as_path(path).unlink()
    done = {o["id"] for m in metas for o in m["problems"]}
    seen = {h for m in metas for h in m["kept_sha1"]}
    todo = [p for p in problems if p.id not in done]
    stats = RunStats()
    index = (metas[-1]["index"] + 1) if metas else 0
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="distilling", unit="problem")
    for start in range(0, len(todo), cfg.shard_problems):
        chunk = todo[start:start + cfg.shard_problems]
        t0 = time.perf_counter()
        outs = sample(chunk, cfg, teacher, cache, stats)
        records, outcomes, deferred = [], [], []
        for p, samples in zip(chunk, outs):
            if any(not isinstance(c, Completion) for c in samples):
                deferred.append(p.id)
                continue
            kept, outcome = judge(p, samples, cfg, tok, seen, teacher_name)
            records += kept
            outcomes.append(outcome)
        if outcomes:
            meta = {"recipe": recipe, "problems": outcomes, "kept_sha1": [r["sha1"] for r in records],
                    "kept_tokens": sum(r["tokens"] for r in records),
                    "seconds": time.perf_counter() - t0}
            metas.append(write_shard(cfg.out, index, records, meta))
            index += 1
        if deferred:
            log.warning("%d problem(s) left for the next run (a teacher request failed): %s", len(deferred),
                        deferred[:5])
        if bar:
            bar.update(len(chunk))
    if bar:
        bar.close()
    return metas, stats, orphans


def pass_rate_histogram(rates: Sequence[float]) -> dict[str, int]:
    """Problems by pass rate: 0 (none correct: the hardest, no trace), (0, .25], ..., (.75, 1)."""
    edges = [("0", lambda r: r == 0.0), ("(0,0.25]", lambda r: 0 < r <= 0.25), ("(0.25,0.5]", lambda r: 0.25 < r <= 0.5),
             ("(0.5,0.75]", lambda r: 0.5 < r <= 0.75), ("(0.75,1)", lambda r: 0.75 < r < 1), ("1", lambda r: r == 1.0)]
    return {name: sum(1 for r in rates if test(r)) for name, test in edges}


def summarize(metas: list[dict[str, Any]], selection: dict[str, Any], problems: Sequence[Problem],
              stats: RunStats, prices: tuple[float, float, str | None], *, seconds: float) -> dict[str, Any]:
    """The distill_report.json body (without config/manifest): dataset totals over every committed shard, and what
    this run did."""
    outcomes = [o for m in metas for o in m["problems"]]
    rejected: Counter = Counter()
    for o in outcomes:
        rejected.update(o["rejected"])
    usage = [sum(o["usage"][i] for o in outcomes) for i in range(3)]
    p_in, p_out, p_src = prices
    samples = sum(o["samples"] for o in outcomes)
    kept = sum(m["traces"] for m in metas)
    rates = [o["pass_rate"] for o in outcomes]
    done = {o["id"] for o in outcomes}
    return {
        "complete": all(p.id in done for p in problems),
        "problems": {
            "records": selection["records"],
            "selected": len(problems),
            "skipped": selection["skipped"],
            "done": len(outcomes),
            "pending": sum(1 for p in problems if p.id not in done),
            "with_traces": sum(1 for o in outcomes if o["kept"]),
        },
        "samples": {"total": samples, "correct": sum(o["correct"] for o in outcomes), "kept": kept,
                    "rejected": dict(sorted(rejected.items()))},
        "pass_rate": {"mean": sum(rates) / len(rates) if rates else None, "histogram": pass_rate_histogram(rates)},
        "tokens": {"teacher_prompt": usage[0], "teacher_completion": usage[1], "teacher_reasoning": usage[2],
                   "kept_student_tokens": sum(m["kept_tokens"] for m in metas)},
        "teacher_cost": {
            "usd": (usage[0] * p_in + usage[1] * p_out) / 1e6,
            "price_input_per_m": p_in, "price_output_per_m": p_out, "price_source": p_src,
        },
        "this_run": {
            "requests": stats.requests, "cache_hits": stats.cache_hits, "failed_requests": stats.failed,
            "paid_tokens": dict(stats.paid),
            "paid_usd": (stats.paid["prompt"] * p_in + stats.paid["completion"] * p_out) / 1e6,
            "seconds": seconds, "errors": stats.errors[:20],
        },
        "decontamination": {"removed": selection["contaminated"]},
        "shards": [{"file": m["file"], "traces": m["traces"], "problems": len(m["problems"]), "sha256": m["sha256"]}
                   for m in metas],
    }
