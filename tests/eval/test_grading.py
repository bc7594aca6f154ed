"""Answer extraction, grading, metrics and the `grade` CLI (real benchmark files from ../shared/data/eval)."""

import json

import pytest

from jax_distill.cli import main
from jax_distill.eval.benchmarks import load_benchmark
from jax_distill.answers import extract_boxed, grade, is_correct, parse_integer
from jax_distill.eval.metrics import majority_correct, pass_at_k, summarize


@pytest.mark.parametrize("text,want", [
    (r"so \boxed{42}", "42"),
    (r"\boxed{1} then later \boxed{073}", "073"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{ \left( 3, \frac{\pi}{2} \right) }", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\fbox{12}", "12"),
    (r"\boxed {7}", "7"),
    (r"\boxed{5} and a truncated \boxed{12", "5"),
    (r"\boxed{a\{b\}c}", r"a\{b\}c"),
    ("no answer", None),
    ("", None),
    (r"\boxed{", None),
    (r"\boxed{}}}}", ""),
])
def test_extract_last_boxed(text, want):
    assert extract_boxed(text) == want


@pytest.mark.parametrize("s,want", [("073", 73), ("$73$", 73), ("73.0", 73), ("1,000", 1000), (r"\text{73}", 73),
                                    ("-5", -5), ("7/2", None), ("x", None), ("", None), ("1e3", None)])
def test_parse_integer(s, want):
    assert parse_integer(s) == want


def test_hostile_completions_are_wrong_never_crash():
    hostile = [None, 12, "\\boxed{" * 10000, "}" * 100000, "\\boxed{" + "9" * 5000 + "}",
               "\\boxed{__import__('os').system('touch /tmp/pwned')}", "\\boxed{\\input{/etc/passwd}}",
               "\\boxed{" + "(" * 3000 + "}", "\x00\\boxed{\x00}", "\ud800\\boxed{3}", "\\boxed{1/0}",
               "\\boxed{\\frac{1}{0}}", "\\boxed{" + "x^" * 500 + "2}", "a" * 2_000_000 + "\\boxed{5}"]
    for h in hostile:
        for kind in ("integer", "math"):
            ans, ok = grade(h, "5" if kind == "integer" else "\\frac{1}{2}", kind, timeout=2)
            assert ok is False or (kind == "integer" and ans == "5")
    import os

    assert not os.path.exists("/tmp/pwned")


def test_equivalence_for_math_answers():
    assert is_correct("0.5", r"\frac{1}{2}", "math")
    assert is_correct(r"\dfrac{1}{2}", r"\frac12", "math")
    assert is_correct(r"2\sqrt{2}", r"\sqrt{8}", "math")
    assert not is_correct("3", r"\frac{1}{2}", "math")
    assert is_correct("073", "73", "integer") and not is_correct("74", "73", "integer")


def test_math500_reference_solutions_grade_correct(shared_data):
    problems = load_benchmark("math500", shared_data / "eval" / "math500.jsonl")
    rows = [json.loads(line) for line in (shared_data / "eval" / "math500.jsonl").read_text().splitlines()]
    misses = []
    for p, row in zip(problems, rows):
        _, ok = grade(row["solution"], p.answer, p.kind, timeout=5)
        if not ok:
            misses.append((p.index, extract_boxed(row["solution"]), p.answer))
    print(f"MATH-500 reference solutions graded wrong: {len(misses)}: {misses}")
    assert len(problems) == 500
    assert 1 - len(misses) / 500 >= 0.99, misses


def test_aime_files_load_as_integer_problems(shared_data):
    for name in ("aime24", "aime25", "amc23"):
        probs = load_benchmark(name, shared_data / "eval" / f"{name}.jsonl")
        assert all(p.kind == "integer" for p in probs) and len(probs) in (30, 40)


def test_bad_benchmark_file_names_line_and_field(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text('{"problem": "x", "answer": "1"}\n{"problem": "y"}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: missing field 'answer'"):
        load_benchmark("custom", f)


def test_metrics_on_hand_computed_cases():
    assert pass_at_k(4, 0, 1) == 0 and pass_at_k(4, 4, 2) == 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert majority_correct(["7", "7", "3"], [True, True, False])
    assert not majority_correct(["3", "7", "7", "3"], [False, True, True, False])  # tie: first seen wins
    assert not majority_correct([None, None], [False, False])
    samples = [{"problem_index": 0, "correct": True, "vote_key": "1", "output_tokens": 100},
               {"problem_index": 0, "correct": False, "vote_key": "2", "output_tokens": 3000},
               {"problem_index": 1, "correct": True, "vote_key": "5", "output_tokens": 5000},
               {"problem_index": 1, "correct": True, "vote_key": "5", "output_tokens": 600}]
    r = summarize(samples, 2, 2, [512, 1024, 8192])
    assert r["pass@1"] == pytest.approx(0.75) and r["pass@2"] == pytest.approx(1.0)
    assert r["maj@2"] == pytest.approx(1.0)
    assert r["accuracy_under_budget"] == {"512": 0.25, "1024": 0.5, "8192": 0.75}


def test_grade_cli_json(tmp_path, shared_data, capsys):
    aime = shared_data / "eval" / "aime24.jsonl"
    rows = [json.loads(x) for x in aime.read_text().splitlines()]
    preds = tmp_path / "p.jsonl"
    with open(preds, "w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"problem_index": i, "completion": f"... \\boxed{{{int(r['answer'])}}}"}) + "\n")
            f.write(json.dumps({"problem_index": i, "completion": "I give up"}) + "\n")
            wrong = (int(r["answer"]) + 1) if i % 2 else int(r["answer"])
            f.write(json.dumps({"problem_index": i, "completion": f"\\boxed{{{wrong}}}"}) + "\n")
    assert main(["grade", "--benchmark", "aime24", "--data", str(aime), "--predictions", str(preds), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_problems"] == 30 and out["n_samples"] == 3
    assert out["pass@1"] == pytest.approx((30 + 15) / 90)
    assert out["maj@k"] == pytest.approx(1.0)  # even rows: 2 right votes; odd rows: tie, first (right) wins
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem_index": 99, "completion": "x"}\n')
    with pytest.raises(SystemExit, match="problem_index 99"):
        main(["grade", "--benchmark", "aime24", "--data", str(aime), "--predictions", str(bad)])
