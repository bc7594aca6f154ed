"""Sample n completions per problem, grade them, and write samples.jsonl, results.json and results.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from jax_distill.answers import extract_answer, grade, is_correct, normalize_for_vote
from jax_distill.eval.benchmarks import Problem
from jax_distill.eval.metrics import DEFAULT_BUDGETS, summarize

# Qwen2.5-Math's chain-of-thought instruction.
DEFAULT_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."

GenerateFn = Callable[..., list[list[int]]]


def grade_completions(problems: Sequence[Problem], completions: Sequence[tuple[int, str, int]]) -> list[dict]:
    """Per-sample records from (problem_index, completion, output_tokens); never raises on hostile text.

    ``extracted_answer``/``correct`` are the strict grade (boxed answers only: the score); ``answer_lenient``/
    ``correct_lenient`` also accept an answer stated without a box (see answers.extract_answer)."""
    out = []
    for idx, text, n_tok in completions:
        p = problems[idx]
        ans, ok = grade(text, p.answer, p.kind)
        ans_l = extract_answer(text, "lenient")
        ok_l = ok if ans_l == ans else is_correct(ans_l, p.answer, p.kind)
        out.append({"problem_index": idx, "completion": text, "extracted_answer": ans, "correct": ok,
                    "answer_lenient": ans_l, "correct_lenient": ok_l, "output_tokens": n_tok,
                    "vote_key": normalize_for_vote(ans), "vote_key_lenient": normalize_for_vote(ans_l)})
    return out


def sample_record(s: dict) -> dict:
    """A samples.jsonl line: the per-sample record without the internal vote keys."""
    return {k: v for k, v in s.items() if not k.startswith("vote_key")}


def results_markdown(name: str, r: dict[str, Any]) -> str:
    """The metrics as markdown tables: strict grading (the score) and, where present, lenient grading beside it."""
    k = r["k"]
    cols = ["pass@1"] + ([f"pass@{k}", f"maj@{k}"] if k > 1 else [])  # k = 1: pass@k and maj@k are pass@1 again
    lines = ["| benchmark | grading | problems | samples | " + " | ".join(cols) + " | mean output tokens |",
             "|---|---|---|---|" + "---|" * len(cols) + "---|"]
    for label, sfx in (("strict", ""), ("lenient", "_lenient")):
        if f"pass@1{sfx}" not in r:
            continue
        vals = " | ".join(f"{r[f'{c}{sfx}']:.3f}" for c in cols)
        lines.append(f"| {name} | {label} | {r['n_problems']} | {r['n_samples']} | {vals} | "
                     f"{r['mean_output_tokens']:.0f} |")
    budgets = r.get("accuracy_under_budget") or {}
    if budgets:  # no budgets (e.g. `grade`): no empty table
        lines += ["", "| output-token budget | " + " | ".join(budgets) + " |", "|---|" + "---|" * len(budgets),
                  "| accuracy | " + " | ".join(f"{v:.3f}" for v in budgets.values()) + " |"]
        if "accuracy_under_budget_lenient" in r:
            lines.append("| accuracy (lenient) | " + " | ".join(
                f"{v:.3f}" for v in r["accuracy_under_budget_lenient"].values()) + " |")
    if "pass@1_lenient" in r:
        lines += ["", ("strict (the score): the answer is the last \\boxed{} (adjacent boxes joined); lenient: an "
                       "answer stated without a box also counts (\"The final answer is 33\").")]
    return "\n".join(lines) + "\n"


def evaluate(problems: Sequence[Problem], *, generate_fn: GenerateFn, tokenizer: Any, benchmark: str = "custom",
             n_samples: int = 1, max_new_tokens: int = 1024, temperature: float = 0.0, top_p: float = 1.0,
             top_k: int = 0, seed: int = 0, prompt_template: str = DEFAULT_TEMPLATE, out_dir: str | Path | None = None,
             budgets: Sequence[int] | None = None, batch_size: int = 64, progress: bool = True,
             continuous: bool = True) -> dict[str, Any]:
    """Sample ``n_samples`` completions for each problem and grade them.

    ``generate_fn(prompt_ids, max_new_tokens=, temperature=, top_p=, top_k=, seed=[...])`` returns generated ids
    (prompt and stop token excluded). Sample j of problem i uses seed ``seed + i * n_samples + j``, so results do not
    depend on the batch size. A sample that reaches ``max_new_tokens`` without a stop counts as truncated.
    ``continuous`` (default): every sample goes to ``generate_fn`` in one call, with ``on_done=`` (called with each
    finished sample's index, for progress), and ``generate_fn`` schedules them itself: continuous batching, e.g.
    `sample.engine.Engine(model, slots=batch_size).generate`, where a slot takes the next sample as soon as its
    sample stops. False: calls of ``batch_size`` samples (static batching, e.g. `sample.sampler.generate`). The
    samples are the same either way.
    """
    from tqdm.auto import tqdm

    budgets = [b for b in (budgets or DEFAULT_BUDGETS) if b <= max_new_tokens] or [max_new_tokens]
    jobs = []
    for p in problems:
        ids, _ = tokenizer.encode_chat([{"role": "user", "content": prompt_template.format(problem=p.problem)}],
                                       add_generation_prompt=True)
        for j in range(n_samples):
            jobs.append((p.index, ids, seed + p.index * n_samples + j))
    index_of = {p.index: i for i, p in enumerate(problems)}
    completions = []
    bar = tqdm(total=len(jobs), desc=f"sampling {benchmark}", unit="sample", disable=not progress)
    step = max(1, len(jobs)) if continuous else batch_size
    for start in range(0, len(jobs), step):
        chunk = jobs[start:start + step]
        extra = {"on_done": lambda _i: bar.update(1)} if continuous else {}
        outs = generate_fn([c[1] for c in chunk], max_new_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, top_k=top_k, seed=[c[2] for c in chunk], **extra)
        for (pidx, _, s), ids in zip(chunk, outs):
            n_tok = len(ids) if len(ids) < max_new_tokens else max_new_tokens + 1  # truncated: over every budget
            completions.append((index_of[pidx], tokenizer.decode(ids), n_tok, s))
        if not continuous:
            bar.update(len(chunk))
    bar.close()
    samples = grade_completions(list(problems), [(i, t, n) for i, t, n, _ in completions])
    for s, (_, _, _, sd) in zip(samples, completions):
        s["seed"] = sd
        s["problem_index"] = problems[s["problem_index"]].index
    results = {"benchmark": benchmark, **summarize(samples, len(problems), n_samples, budgets),
               "sampling": {"temperature": temperature, "top_p": top_p, "top_k": top_k,
                            "max_new_tokens": max_new_tokens, "seed": seed, "prompt_template": prompt_template}}
    if out_dir is not None:
        write_results(out_dir, benchmark, samples, results)
    return results


def write_results(out_dir: str | Path, benchmark: str, samples: Sequence[dict], results: dict[str, Any]) -> None:
    """OUT/samples.jsonl (every graded sample), OUT/results.json and OUT/results.md (OUT local or gs://)."""
    from jax_distill.paths import as_path

    out = as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "samples.jsonl").open("w") as f:
        for s in samples:
            f.write(json.dumps(sample_record(s)) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(benchmark, results))
