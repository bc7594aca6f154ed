"""Benchmark problems from local JSON lines (tests, offline) or the Hugging Face hub (through `datasets`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["integer", "math"]

# name -> (hub dataset, split, answer kind)
KNOWN = {
    "aime24": ("HuggingFaceH4/aime_2024", "train", "integer"),
    "aime25": ("yentinglin/aime_2025", "train", "integer"),
    "amc23": ("math-ai/amc23", "test", "integer"),
    "math500": ("HuggingFaceH4/MATH-500", "test", "math"),
}
PROBLEM_FIELDS = ("problem", "question", "Problem")
ANSWER_FIELDS = ("answer", "Answer", "final_answer")


@dataclass(frozen=True)
class Problem:
    index: int  # 0-based row in the benchmark file
    problem: str
    answer: str
    kind: Kind


def _kind_for(name: str, answers: list[str]) -> Kind:
    if name in KNOWN:
        return KNOWN[name][2]  # type: ignore[return-value]
    import re

    from jax_distill.answers import parse_integer

    # Plain numbers only ("73", "$073$", "1,000", "73.0", "\text{73}"): an answer such as "90^\circ" or "x = 5"
    # makes the benchmark a MATH-style one, graded by equivalence.
    plain = re.compile(r"[\s$+-]*(?:\\text\{)?[\d,. ]+\}?[\s$]*")
    return "integer" if all(plain.fullmatch(a) and parse_integer(a) is not None for a in answers) else "math"


def _rows_to_problems(rows: list[dict], name: str, where: str) -> list[Problem]:
    out: list[tuple[str, str]] = []
    for i, row in enumerate(rows):
        prob = next((row[f] for f in PROBLEM_FIELDS if f in row), None)
        ans = next((row[f] for f in ANSWER_FIELDS if f in row), None)
        if not isinstance(prob, str) or not prob.strip():
            raise ValueError(f"{where}:{i + 1}: missing or empty field 'problem' (one of {PROBLEM_FIELDS})")
        if ans is None or (isinstance(ans, str) and not ans.strip()):
            raise ValueError(f"{where}:{i + 1}: missing field 'answer' (one of {ANSWER_FIELDS})")
        if isinstance(ans, float) and ans.is_integer():
            ans = int(ans)
        out.append((prob, str(ans)))
    kind = _kind_for(name, [a for _, a in out])
    return [Problem(i, p, a, kind) for i, (p, a) in enumerate(out)]


def load_benchmark(name: str, data: str | Path | None = None) -> list[Problem]:
    """Problems of ``name`` (aime24, aime25, amc23, math500, or a hub dataset "owner/name") from ``data`` (a local
    JSON-lines file) when given, else from the hub."""
    if data is not None:
        path = Path(data)
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: malformed JSON: {err}") from None
        return _rows_to_problems(rows, name, str(path))
    from jax_distill.errors import UserError, hub_endpoint, hub_offline_flag, reachable

    hub, split, _ = KNOWN.get(name, (name, "test", None))
    if name not in KNOWN and name.count("/") != 1:
        raise UserError(f"--benchmark {name!r}: not a known benchmark {sorted(KNOWN)} nor a hub dataset owner/name")
    flag = hub_offline_flag()
    if flag is None:  # one short probe instead of the hub client's retries
        why = reachable(hub_endpoint(), timeout=3.0)
        if why:
            raise UserError(f"offline: {why} while loading {name} from the hub ({hub})",
                            "pass --data FILE (a local JSON-lines benchmark file)")
    import datasets

    try:
        ds = datasets.load_dataset(hub, split=split)
    except Exception as err:
        if flag is None:
            raise
        raise UserError(f"offline ({flag} is set) and {hub} is not in the local cache ({type(err).__name__})",
                        "pass --data FILE (a local JSON-lines benchmark file) or unset " + flag) from err
    return _rows_to_problems(list(ds), name, hub)
