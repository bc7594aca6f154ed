"""Run a grader over the grading corpus (tests/eval/grading_corpus.jsonl) and compare graders case kind by case kind.

Each corpus row is a completion, a reference answer, the answer kind (integer / math) and the verdict it must get
(``expected`` for strict extraction, ``expected_lenient`` for lenient). Graders:

- ``ours``: jax_distill.answers, strict and lenient.
- ``math-verify``: the installed math-verify package used as its README shows:
  ``verify(parse(gold), parse(completion))`` with its default extraction (LaTeX and plain expressions, anchors such
  as "final answer is", boxed answers).
- ``qwen``: QwenLM/Qwen2.5-Math's ``evaluation/parser.py`` ``extract_answer`` + ``strip_string`` and
  ``evaluation/grader.py`` ``math_equal``, imported from a checkout given with ``--qwen-eval`` (not vendored here); run
  it with an interpreter that has that folder's requirements (sympy 1.12, antlr4-python3-runtime 4.11.1, word2number,
  regex, numpy) and its bundled latex2sympy on the path (``--qwen-eval`` adds ``DIR`` and ``DIR/latex2sympy``).

    python benchmarks/compare_graders.py --grader ours --out /tmp/ours.json
    python benchmarks/compare_graders.py --grader math-verify --out /tmp/mv.json
    /path/to/qwen-venv/bin/python benchmarks/compare_graders.py --grader qwen --qwen-eval Qwen2.5-Math/evaluation \\
        --out /tmp/qwen.json
    python benchmarks/compare_graders.py --table /tmp/ours.json /tmp/mv.json /tmp/qwen.json

The table gives, per case kind, how many corpus cases a grader gets right, how many correct forms it rejects and how
many wrong forms it accepts. Model text is only ever evaluated inside the third-party graders (Qwen's uses sympy's
``parse_expr``); the corpus is our own data.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "eval" / "grading_corpus.jsonl"


class _Timeout(Exception):
    pass


def _with_alarm(fn, seconds: int = 5):
    def handler(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a grader crash or timeout counts as "not accepted"
        return False
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def grade_ours(rows):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jax_distill.answers import extract_answer, is_correct

    out = {}
    for r in rows:
        for mode in ("strict", "lenient"):
            ans = extract_answer(r["prediction"], mode)
            out.setdefault(f"ours ({mode})", []).append(bool(is_correct(ans, r["gold"], r["kind"], timeout=3)))
    return out


def grade_math_verify(rows):
    from math_verify import parse, verify

    res = []
    for r in rows:
        res.append(bool(_with_alarm(lambda r=r: verify(parse(f"${r['gold']}$"), parse(r["prediction"])))))
    return {"Math-Verify": res}


def grade_qwen(rows, eval_dir: str):
    sys.path[:0] = [eval_dir, str(Path(eval_dir) / "latex2sympy")]
    from grader import math_equal  # Qwen2.5-Math/evaluation modules
    from parser import extract_answer, strip_string

    res = []
    for r in rows:
        data_name = "aime24" if r["kind"] == "integer" else "math"

        def one(r=r, data_name=data_name):
            pred = strip_string(extract_answer(r["prediction"], data_name))
            return math_equal(pred, strip_string(r["gold"]))

        res.append(bool(_with_alarm(one)))
    return {"Qwen2.5-Math": res}


def table(paths: list[str]) -> str:
    rows = [json.loads(x) for x in CORPUS.read_text().splitlines() if x.strip()]
    graders: dict[str, list[bool]] = {}
    for p in paths:
        graders.update(json.loads(Path(p).read_text()))
    cases = sorted({r["case"] for r in rows}, key=lambda c: min(i for i, r in enumerate(rows) if r["case"] == c))
    names = list(graders)
    head = "| case kind | correct / wrong forms | " + " | ".join(names) + " |"
    lines = [head, "|---|---|" + "---|" * len(names)]

    def cell(name, idx):
        # Counted against the lenient verdicts for every grader: an answer stated without a box is a correct form
        # that our strict mode rejects by design (the other graders have no strict/lenient split).
        exp_key = "expected_lenient"
        got = graders[name]
        acc_right = sum(1 for i in idx if rows[i][exp_key] and got[i])
        n_right = sum(1 for i in idx if rows[i][exp_key])
        wrong_acc = sum(1 for i in idx if not rows[i][exp_key] and got[i])
        s = f"{acc_right}/{n_right}"
        return s + (f", **{wrong_acc} wrong accepted**" if wrong_acc else "")

    total_idx = list(range(len(rows)))
    for c in cases + ["all"]:
        idx = total_idx if c == "all" else [i for i, r in enumerate(rows) if r["case"] == c]
        n_ok = sum(1 for i in idx if rows[i]["expected_lenient"])
        lines.append(f"| {c} | {n_ok} / {len(idx) - n_ok} | " + " | ".join(cell(n, idx) for n in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grader", choices=["ours", "math-verify", "qwen"])
    ap.add_argument("--qwen-eval", help="path of a Qwen2.5-Math/evaluation checkout (for --grader qwen)")
    ap.add_argument("--out", help="write {grader: [accepted per corpus row]} here")
    ap.add_argument("--table", nargs="+", help="print the comparison table from these --out files")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return 0
    rows = [json.loads(x) for x in CORPUS.read_text().splitlines() if x.strip()]
    if args.grader == "ours":
        res = grade_ours(rows)
    elif args.grader == "math-verify":
        res = grade_math_verify(rows)
    elif args.grader == "qwen":
        if not args.qwen_eval:
            ap.error("--grader qwen needs --qwen-eval DIR")
        res = grade_qwen(rows, args.qwen_eval)
    else:
        ap.error("give --grader or --table")
    if args.out:
        Path(args.out).write_text(json.dumps(res) + "\n")
    for name, got in res.items():
        key = "expected" if name == "ours (strict)" else "expected_lenient"
        agree = sum(1 for r, g in zip(rows, got) if g == r[key])
        print(f"{name}: agrees with the corpus on {agree}/{len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
