"""Stage-1 data: public problem/solution sets rewritten into long, standardized step-by-step solutions ending in
``\\boxed{answer}`` (the paper used GPT-4o-mini as the rewriter and dropped problems that need a figure or a proof).

Flow: load (``datasets``: hub name or local JSON/JSONL/Parquet) → filter (counted by reason) → rewrite (an
OpenAI-compatible chat endpoint, or offline rules) through an on-disk cache → check that the rewrite still boxes the
reference answer → write trace JSONL (local or gs://). ``records = kept + sum(skipped)`` always holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

from jax_distill.data.records import ReadReport
from jax_distill.answers import BOX_OPEN, extract_boxed, is_correct

log = logging.getLogger("jax_distill.reformat")

# What the paper filtered out: problems that rely on a picture, and proofs (no single answer to check).
_FIGURE = re.compile(r"\[asy\]|\\begin\{tikzpicture\}|\b(figure|diagram|shown below|pictured|graph below)\b", re.I)
_PROOF = re.compile(r"\b(prove|proof|show that|demonstrate that|justify your answer)\b", re.I)

PROMPT_VERSION = "stage1-v1"
SYSTEM_PROMPT = (
    "You rewrite competition math solutions into a standardized format for training a model to reason. "
    "Keep the mathematics of the given solution and its final answer exactly. Write: a one-line restatement of what "
    "is asked; then numbered steps ('Step 1:', 'Step 2:', ...), each doing one thing and explaining why; then a short "
    "check of the result; then a last line 'Therefore, the final answer is $\\boxed{ANSWER}$.' with the reference "
    "answer. Use LaTeX for math. Do not mention that you are rewriting."
)


def needs_figure(problem: str) -> bool:
    return bool(_FIGURE.search(problem))


def asks_for_proof(problem: str) -> bool:
    return bool(_PROOF.search(problem))


@dataclass
class Rewrite:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Rewriter(Protocol):
    cache_id: str  # changes whenever the rewriter's output would change (model, prompt version, rules version)

    def rewrite(self, problem: str, solution: str, answer: str) -> Rewrite: ...


# ------------------------------------------------------------------------------------------------ offline rules


def _unbox(text: str) -> str:
    """``\\boxed{x}`` → ``x`` everywhere (brace-balanced), so the only box left is the final answer's."""
    out, i = [], 0
    for m in BOX_OPEN.finditer(text):
        if m.start() < i:
            continue
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:
            break
        out.append(text[i:m.start()])
        out.append(text[m.end():j - 1])
        i = j
    out.append(text[i:])
    return "".join(out)


def _split_steps(solution: str) -> list[str]:
    """Paragraphs; a single paragraph is split at sentence ends outside ``$...$`` math."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", solution) if p.strip()]
    if len(paras) > 1:
        return paras
    text, steps, start, in_math = paras[0] if paras else "", [], 0, False
    for i, ch in enumerate(text):
        if ch == "$":
            in_math = not in_math
        elif ch in ".!?" and not in_math:
            j = i + 1
            while j < len(text) and text[j] == " ":
                j += 1
            if j > i + 1 and j < len(text) and text[j].isupper():
                steps.append(text[start:i + 1].strip())
                start = j
    steps.append(text[start:].strip())
    return [s for s in steps if s]


class RuleRewriter:
    """Offline, deterministic: the solution's own paragraphs/sentences as numbered steps, a restatement, a check and
    the final boxed answer. It changes the form, not the reasoning; use it to test the pipeline or as a fallback."""

    cache_id = "rules-v1"

    def rewrite(self, problem: str, solution: str, answer: str) -> Rewrite:
        solution = re.sub(r"\[asy\].*?\[/asy\]", "", solution, flags=re.S)  # drawing code is not reasoning
        steps = _split_steps(_unbox(solution)) or [solution]
        first = problem.strip().split("\n")[0]
        lines = [f"We need to solve: {first}", ""]
        lines += [f"Step {k}: {s}\n" for k, s in enumerate(steps, 1)]
        lines += [f"Check: the steps above give {answer}, which answers what was asked.", "",
                  f"Therefore, the final answer is $\\boxed{{{answer}}}$."]
        return Rewrite("\n".join(lines))


# ------------------------------------------------------------------------------------ OpenAI-compatible endpoint


class EndpointRewriter:
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, vLLM, SGLang, ...).

    Retries (429, 5xx, timeouts, dropped connections) with exponential backoff and jitter are the `openai` client's
    own (``max_retries``); concurrency is bounded by the caller's thread pool."""

    def __init__(self, base_url: str | None, model: str, *, api_key: str | None = None, max_retries: int = 6,
                 timeout: float = 120.0, temperature: float = 0.0, max_tokens: int = 4096):
        import openai

        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.cache_id = f"openai:{model}:{PROMPT_VERSION}:t{temperature}"
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=max_retries,
                                     timeout=timeout)

    def rewrite(self, problem: str, solution: str, answer: str) -> Rewrite:
        user = f"Problem:\n{problem}\n\nReference solution:\n{solution}\n\nReference answer: {answer}"
        resp = self._client.chat.completions.create(
            model=self.model, temperature=self.temperature, max_tokens=self.max_tokens,
            messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}])
        text = resp.choices[0].message.content or ""
        usage = resp.usage
        return Rewrite(text, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)


# ------------------------------------------------------------------------------------------------------- cache


class RewriteCache:
    """Append-only JSONL of finished rewrites keyed by (rewriter, problem, solution, answer): a rerun after a crash
    or Ctrl-C resumes where it stopped, and never pays twice. A torn last line (killed mid-write) is ignored."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        if self.path and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    e = json.loads(line)
                    self.entries[e["key"]] = e
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.torn_lines += 1
        self._lock = threading.Lock()

    @staticmethod
    def key(cache_id: str, problem: str, solution: str, answer: str) -> str:
        return hashlib.sha256(json.dumps([cache_id, problem, solution, answer]).encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, rw: Rewrite) -> None:
        entry = {"key": key, "text": rw.text, "prompt_tokens": rw.prompt_tokens,
                 "completion_tokens": rw.completion_tokens}
        with self._lock:
            self.entries[key] = entry
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")


# ------------------------------------------------------------------------------------------------------ driver


@dataclass
class ReformatReport(ReadReport):
    """records = kept + sum(skipped.values()), with the rewriter's calls, tokens and cost."""

    api_calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0  # all kept or attempted rewrites, cached ones included
    completion_tokens: int = 0
    new_prompt_tokens: int = 0  # paid in this run
    new_completion_tokens: int = 0
    cost_usd: float = 0.0  # of this run's calls
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("errors", "truncated", "per_file")}
        d["skipped"] = dict(sorted(self.skipped.items()))
        d["errors"] = self.errors[:20]
        return d


@dataclass(frozen=True)
class FieldMap:
    problem: tuple[str, ...] = ("problem", "question", "prompt")
    solution: tuple[str, ...] = ("solution", "response", "answer_explanation")
    answer: tuple[str, ...] = ("answer", "final_answer")
    id: tuple[str, ...] = ("id", "unique_id", "idx")


def _pick(rec: dict[str, Any], names: Iterable[str]) -> Any:
    for n in names:
        if rec.get(n) not in (None, ""):
            return rec[n]
    return None


def load_problem_set(spec: str, *, split: str = "train", name: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows of a problem set through `datasets`: a hub name (``name`` = its config) or local JSON/JSONL/Parquet
    files (a path or glob)."""
    import datasets

    path = Path(spec)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("json", "jsonl", "parquet") and not path.exists():
        yield from datasets.load_dataset(spec, name, split=split)  # a hub name
        return
    if path.is_dir():
        raise ValueError(f"{spec}: give files or a glob, not a folder")
    if not any(ch in spec for ch in "*?[") and not path.exists():
        raise FileNotFoundError(f"problem set not found: {spec}")
    yield from datasets.load_dataset("parquet" if suffix == "parquet" else "json", data_files=spec, split="train")


def reformat(rows: Iterable[dict[str, Any]], rewriter: Rewriter, *, source: str, cache: RewriteCache | None = None,
             fields: FieldMap = FieldMap(), concurrency: int = 8, price_in_per_m: float = 0.0,
             price_out_per_m: float = 0.0, strict: bool = False, progress: bool = False
             ) -> tuple[list[dict[str, Any]], ReformatReport]:
    """Filter and rewrite ``rows``; returns (trace records in input order, report)."""
    cache = cache or RewriteCache(None)
    report, t0 = ReformatReport(), time.perf_counter()
    todo: list[tuple[int, dict[str, Any], str]] = []
    results: dict[int, dict[str, Any]] = {}

    for i, rec in enumerate(rows):
        report.records += 1
        where = f"{source} row {i}"
        problem, solution = _pick(rec, fields.problem), _pick(rec, fields.solution)
        if not isinstance(problem, str) or not isinstance(solution, str) or not problem.strip() or not solution.strip():
            report.skip("missing_field", where, strict, f"needs a problem ({'/'.join(fields.problem)}) and a "
                        f"solution ({'/'.join(fields.solution)}) as non-empty strings")
            continue
        if needs_figure(problem):
            report.skip("needs_figure", where, strict, "the problem refers to a figure or diagram")
            continue
        if asks_for_proof(problem):
            report.skip("proof", where, strict, "the problem asks for a proof (no single answer to check)")
            continue
        answer = _pick(rec, fields.answer)
        answer = str(answer).strip() if answer is not None else extract_boxed(solution)
        if not answer:
            report.skip("no_answer", where, strict, "no answer field and no \\boxed{} in the solution")
            continue
        rid = _pick(rec, fields.id)
        item = {"id": str(rid) if rid is not None else f"{source}:{i}", "source": source, "problem": problem,
                "answer": answer}
        key = cache.key(rewriter.cache_id, problem, solution, answer)
        hit = cache.get(key)
        if hit is not None:
            report.cache_hits += 1
            results[i] = {**item, "response": hit["text"], "_usage": (hit["prompt_tokens"], hit["completion_tokens"])}
        else:
            todo.append((i, {**item, "_solution": solution}, key))

    def work(entry):
        i, item, key = entry
        rw = rewriter.rewrite(item["problem"], item["_solution"], item["answer"])
        cache.put(key, rw)
        return i, item, rw

    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="rewriting", unit="problem")
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(work, e): e for e in todo}
        for fut in as_completed(futures):
            i, item, _ = futures[fut]
            report.api_calls += 1
            try:
                _, item, rw = fut.result()
            except Exception as err:  # noqa: BLE001 - after the client's retries: count, report, keep going
                report.errors.append(f"{item['id']}: {type(err).__name__}: {err}")
                report.skip("rewrite_failed", f"{source} row {i}", strict, f"rewriter failed after retries: {err}")
                if bar:
                    bar.update()
                continue
            report.new_prompt_tokens += rw.prompt_tokens
            report.new_completion_tokens += rw.completion_tokens
            item.pop("_solution")
            results[i] = {**item, "response": rw.text, "_usage": (rw.prompt_tokens, rw.completion_tokens)}
            if bar:
                bar.update()
    if bar:
        bar.close()

    kept = []
    for i in sorted(results):  # input order, whatever order the endpoint answered in
        rec = results[i]
        p, c = rec.pop("_usage")
        report.prompt_tokens += p
        report.completion_tokens += c
        # Checked in this (main) thread: math_verify's timeouts use signals.
        boxed = extract_boxed(rec["response"])
        if boxed is None:
            report.skip("rewrite_unboxed", f"{source} row {i}", strict, "the rewrite has no \\boxed{} answer")
            continue
        if not is_correct(boxed, rec["answer"], "math"):
            report.skip("answer_mismatch", f"{source} row {i}", strict,
                        f"the rewrite boxes {boxed!r}, the reference answer is {rec['answer']!r}")
            continue
        kept.append(rec)
    report.kept = len(kept)
    report.cost_usd = (report.new_prompt_tokens * price_in_per_m + report.new_completion_tokens * price_out_per_m) / 1e6
    report.seconds = time.perf_counter() - t0
    return kept, report


def write_traces(records: list[dict[str, Any]], url: str) -> None:
    """Trace JSONL (docs/data.md) to a local path or a gs:// URI (through epath, like every run output)."""
    from jax_distill.paths import as_path

    out = as_path(url)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    out.write_bytes(payload)
