"""Answer extraction and equivalence, the one home of these rules: the data pipeline (stage-1 rewrites, trace
filters) and the evaluation both use them. Model text is data: it is scanned and parsed, never evaluated.

- The answer is the content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched.
- Integer benchmarks (AIME, AMC): the answer is normalised by string rules and compared as an integer ("073" == 73).
- MATH-style answers: mathematical equivalence through HF's math-verify, LaTeX extraction only (its ANTLR-based
  LaTeX parser, never sympy's string ``parse_expr``/``sympify``), with a time limit per check.
"""

from __future__ import annotations

import re
from typing import Literal

MAX_COMPLETION_CHARS = 1_000_000  # longer completions are graded on their tail (where the final answer is)
MAX_ANSWER_CHARS = 1_000
BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")  # the opening of a box, up to its "{"


def extract_boxed(text: str | None) -> str | None:
    """Content of the last complete ``\\boxed{...}`` in ``text`` (nested braces handled), or None.

    One linear pass with a brace stack, so hostile inputs (thousands of unclosed boxes) cost O(n)."""
    if not isinstance(text, str) or not text:
        return None
    text = text[-MAX_COMPLETION_CHARS:]
    box_open = {m.end() - 1 for m in BOX_OPEN.finditer(text)}  # index of each box's "{"
    stack: list[int] = []
    last: tuple[int, int] | None = None
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            start = stack.pop()
            if start in box_open and (last is None or start > last[0]):
                last = (start, i)
        i += 1
    if last is None:
        return None
    content = text[last[0] + 1: last[1]].strip()
    return content if len(content) <= MAX_ANSWER_CHARS else None


_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")


def parse_integer(answer: str | None) -> int | None:
    """An integer from a boxed answer by string rules only: "073", "$73$", "73.0", "1,000", "\\text{73}"."""
    if answer is None:
        return None
    s = _TEXT_WRAP.sub(r"\1", answer)
    s = s.replace("$", "").replace("\\!", "").replace("{,}", "").replace(",", "").replace("\\ ", "").strip()
    s = re.sub(r"^\\?\(|\\?\)$", "", s).strip()
    m = re.fullmatch(r"([+-]?)(\d{1,12})(?:\.0+)?", s)
    if not m:
        return None
    return int(m.group(1) + m.group(2))


def _math_verify_equal(gold: str, pred: str, timeout: int) -> bool:
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0)]
    try:
        g = parse(f"${gold}$", extraction_config=config, parsing_timeout=timeout)
        p = parse(f"${pred}$", extraction_config=config, parsing_timeout=timeout)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a hostile or malformed answer is wrong, never a crash
        return False


def normalize_for_vote(answer: str | None) -> str | None:
    """Key under which equivalent-looking answers vote together in maj@k (integers canonicalised)."""
    if answer is None:
        return None
    i = parse_integer(answer)
    if i is not None:
        return str(i)
    return re.sub(r"\s+|\\left|\\right|\\!|\$", "", answer)


def is_correct(pred_answer: str | None, gold: str, kind: Literal["integer", "math"], timeout: int = 5) -> bool:
    """Grade an extracted answer against the reference answer."""
    if pred_answer is None:
        return False
    if kind == "integer":
        g, p = parse_integer(gold), parse_integer(pred_answer)
        return g is not None and p is not None and g == p
    if normalize_for_vote(pred_answer) == normalize_for_vote(gold):
        return True
    return _math_verify_equal(gold, pred_answer, timeout)


def grade(completion: str | None, gold: str, kind: Literal["integer", "math"], timeout: int = 5) -> tuple[str | None, bool]:
    """(extracted answer, correct) for one completion."""
    ans = extract_boxed(completion)
    return ans, is_correct(ans, gold, kind, timeout)
