"""Pure metric functions over graded samples: pass@1, unbiased pass@k, maj@k, accuracy under token budgets."""

from __future__ import annotations

from collections import Counter
from math import comb
from typing import Sequence

DEFAULT_BUDGETS = (512, 1024, 2048, 4096, 8192, 16384, 32768)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021) for n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(keys: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the most common answer key among the samples is a correct one.

    Ties go to the answer that appeared first (deterministic); samples without an answer do not vote."""
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return False
    best = max(votes.values())
    for key, ok in zip(keys, correct):
        if key is not None and votes[key] == best:
            return bool(ok)
    return False


def accuracy_under_budget(samples: Sequence[dict], budget: int) -> float:
    """Mean over samples of (correct and used at most ``budget`` output tokens, finished): the paper's metric of
    accuracy under a constrained output-token budget. Samples: dicts with ``correct``, ``output_tokens``."""
    if not samples:
        return 0.0
    return sum(1 for s in samples if s["correct"] and s["output_tokens"] <= budget) / len(samples)


def summarize(samples: Sequence[dict], n_problems: int, k: int, budgets: Sequence[int]) -> dict:
    """results.json metrics from per-sample dicts (``problem_index``, ``correct``, ``vote_key``, ``output_tokens``).

    Where every sample also has ``correct_lenient`` (and ``vote_key_lenient``), the same metrics under lenient answer
    extraction are added with a ``_lenient`` suffix (``pass@1_lenient``, ``pass@k_lenient``, ``maj@k_lenient``,
    ``accuracy_under_budget_lenient``); the unsuffixed ones are the strict score."""
    by_problem: dict[int, list[dict]] = {}
    for s in samples:
        by_problem.setdefault(s["problem_index"], []).append(s)
    n_samples = min((len(v) for v in by_problem.values()), default=0)
    k = min(k, n_samples) if n_samples else k

    def scores(correct: str, vote: str, sfx: str) -> dict:
        pass1 = [sum(s[correct] for s in v) / len(v) for v in by_problem.values()]
        passk = [pass_at_k(len(v), sum(s[correct] for s in v), k) for v in by_problem.values()] if n_samples else []
        maj = [majority_correct([s.get(vote) for s in v[:k]], [s[correct] for s in v[:k]]) for v in by_problem.values()]
        return {
            f"pass@1{sfx}": sum(pass1) / n_problems if n_problems else 0.0,
            f"pass@{k}{sfx}": sum(passk) / n_problems if n_problems else 0.0,
            f"maj@{k}{sfx}": sum(maj) / n_problems if n_problems else 0.0,
            f"maj@k{sfx}": sum(maj) / n_problems if n_problems else 0.0,
        }

    out = {"n_problems": n_problems, "n_samples": n_samples, **scores("correct", "vote_key", ""), "k": k,
           "mean_output_tokens": sum(s["output_tokens"] for s in samples) / len(samples) if samples else 0.0,
           "accuracy_under_budget": {str(b): accuracy_under_budget(samples, b) for b in budgets}}
    if samples and all("correct_lenient" in s for s in samples):
        out.update(scores("correct_lenient", "vote_key_lenient", "_lenient"))
        lenient = [{"correct": s["correct_lenient"], "output_tokens": s["output_tokens"]} for s in samples]
        out["accuracy_under_budget_lenient"] = {str(b): accuracy_under_budget(lenient, b) for b in budgets}
    return out
