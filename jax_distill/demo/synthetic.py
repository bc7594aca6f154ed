"""A programmatic teacher: seeded arithmetic word problems with integer answers (two-digit additions, 20..198).

Stage 1 gets short standardized solutions (the equation, then ``\\boxed{}``); stage 2 gets longer step-by-step traces
that add column by column with carries, check the result, and sometimes make a slip that the check catches and
corrects (backtracking) — the kind of trace a stronger teacher writes. A tiny model cannot add two numbers in one
step, but it can learn the single-digit facts of a written-out computation: that is the point of the demo, and why
accuracy jumps after stage 2.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

NAMES = ["Ava", "Ben", "Cleo", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jia", "Kai", "Lena", "Milo", "Nia"]
ITEMS = ["apples", "marbles", "stamps", "coins", "cards", "shells", "pens", "books"]


def _problem(rng: random.Random) -> dict[str, Any]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    text = f"{name} has {a} {item} and gets {b} more {item}. How many {item} does {name} have now?"
    return {"a": a, "b": b, "name": name, "item": item, "problem": text, "answer": a + b}


def _digits_add(x: int, y: int) -> list[str]:
    """Column addition, least significant digit first, with carries."""
    steps, carry, place = [], 0, 0
    xs, ys = str(x)[::-1], str(y)[::-1]
    places = ["ones", "tens", "hundreds", "thousands"]
    for i in range(max(len(xs), len(ys))):
        dx = int(xs[i]) if i < len(xs) else 0
        dy = int(ys[i]) if i < len(ys) else 0
        s = dx + dy + carry
        steps.append(f"{places[place]}: {dx} + {dy}" + (f" + {carry}" if carry else "") + f" = {s}, write {s % 10}"
                     + (", carry 1" if s >= 10 else ""))
        carry, place = s // 10, place + 1
    if carry:
        steps.append(f"{places[place]}: carry 1, write 1")
    return steps


def stage1_solution(p: dict[str, Any]) -> str:
    return f"{p['a']} + {p['b']} = {p['answer']}.\nThe answer is \\boxed{{{p['answer']}}}."


def stage2_trace(p: dict[str, Any], rng: random.Random) -> str:
    a, b, ans = p["a"], p["b"], p["answer"]
    lines = [f"{p['name']} starts with {a} {p['item']} and gets {b} more.", f"Add {a} + {b}:"]
    lines += [f"  {s}" for s in _digits_add(a, b)]
    if rng.random() < 0.2:
        wrong = ans + rng.choice([-10, 10])
        lines += [f"So {a} + {b} = {wrong}.", f"Check: {wrong} - {b} = {wrong - b}, not {a}. Wrong, redo.",
                  f"Add {a} + {b} again:"] + [f"  {s}" for s in _digits_add(a, b)]
    lines += [f"So {a} + {b} = {ans}.", f"Check: {ans} - {b} = {a}. Correct.", f"The answer is \\boxed{{{ans}}}."]
    return "\n".join(lines)


def make_split(kind: Literal["stage1", "stage2", "heldout"], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` records in the trace format (problem, response, answer, id, source).

    Held-out problems are disjoint from the training splits: a problem's (a, b, c, d) determines its split by hash."""
    rng = random.Random(f"{kind}-{seed}")
    out: list[dict[str, Any]] = []
    seen: set[tuple[int, int]] = set()
    while len(out) < n:
        p = _problem(rng)
        key = (p["a"], p["b"])
        is_heldout = (p["a"] * 7 + p["b"] * 3) % 10 == 0  # a fixed 10% of (a, b) pairs is never trained on
        if key in seen or is_heldout != (kind == "heldout"):
            continue
        seen.add(key)
        response = stage1_solution(p) if kind == "stage1" else stage2_trace(p, rng)
        out.append({"id": f"{kind}-{len(out)}", "problem": p["problem"], "response": response,
                    "answer": str(p["answer"]), "source": f"jax_distill.demo.synthetic:{kind}"})
    return out


def write_jsonl(records: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path
