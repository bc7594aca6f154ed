"""Bad input through `jax_distill.cli.main`: each case exits non-zero with exactly one line on stderr naming the
culprit, and no traceback (issue 18). Most run in-process (fast); a few through a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jax_distill.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = "configs/tiny_cpu.yaml"
TOK = "configs/tiny_data/tokenizer"
# Environment noise from native plugins (the CUDA plugin on a CPU-only host), not from this program.
NOISE = ("WARNING: All log messages before absl::InitializeLog()", "cudart_stub.cc")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"problem": f"p{i}", "answer": str(i)}) + "\n" for i in range(3)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    traces = tmp_path / "traces.jsonl"
    traces.write_text(json.dumps({"problem": "1+1?", "response": "2. \\boxed{2}"}) + "\n")
    bad_trace = tmp_path / "bad_trace.jsonl"
    bad_trace.write_text(json.dumps({"problem": "1+1?"}) + "\n")
    pred_one = tmp_path / "pred_one.jsonl"
    pred_one.write_text(json.dumps({"problem_index": 0, "completion": "\\boxed{0}"}) + "\n")
    pred_bad = tmp_path / "pred_bad.jsonl"
    pred_bad.write_text("{not json\n")
    pred_range = tmp_path / "pred_range.jsonl"
    pred_range.write_text(json.dumps({"problem_index": 7, "completion": "x"}) + "\n")
    bad_bench = tmp_path / "bad_bench.jsonl"
    bad_bench.write_text("{oops\n")
    noans = tmp_path / "noans.jsonl"
    noans.write_text(json.dumps({"problem": "p"}) + "\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [1, 2\n")
    list_yaml = tmp_path / "list.yaml"
    list_yaml.write_text("- 1\n- 2\n")
    return {k: str(v) for k, v in locals().items() if isinstance(v, Path)} | {"tmp": str(tmp_path)}


# (id, argv with {placeholders} from `files`, substring the one line must contain)
CASES = [
    # flags (argparse), every command
    ("unknown-command", ["nosuch"], "invalid choice"),
    ("train-no-config", ["train"], "--config"),
    ("train-bad-flag", ["train", "--config", TINY, "--bogus"], "--bogus"),
    ("data-no-sub", ["data"], "SUBCOMMAND"),
    ("data-seq-len-not-int", ["data", "stats", "--data", "x", "--tokenizer", TOK, "--seq-len", "abc"], "--seq-len"),
    ("data-bad-packing", ["data", "stats", "--data", "x", "--tokenizer", TOK, "--seq-len", "64", "--packing", "zz"],
     "--packing"),
    ("grade-missing-value", ["grade", "--benchmark"], "--benchmark"),
    ("eval-bad-int", ["eval", "--model", "m", "--benchmark", "b", "--out", "o", "--n-samples", "x"], "--n-samples"),
    ("convert-no-to", ["convert", "--from", "x"], "--to"),
    ("plan-no-source", ["plan", "--topology", "v5p-8"], "--model"),
    ("cost-no-config", ["cost"], "--config"),
    ("demo-bad-int", ["demo", "--seed", "x"], "--seed"),
    # train: config file, overrides, values checked at load time
    ("train-config-missing", ["train", "--config", "nope.yaml"], "config file not found: nope.yaml"),
    ("train-bad-yaml", ["train", "--config", "{bad_yaml}"], "invalid YAML"),
    ("train-yaml-not-mapping", ["train", "--config", "{list_yaml}"], "top level must be a mapping"),
    ("train-steps-negative", ["train", "--config", TINY, "train.steps=-1"], "steps must be >= 1"),
    ("train-steps-zero", ["train", "--config", TINY, "train.steps=0"], "steps must be >= 1"),
    ("train-batch-zero", ["train", "--config", TINY, "train.batch_size=0"], "batch_size must be >= 1"),
    ("train-grad-accum-zero", ["train", "--config", TINY, "train.grad_accum=0"], "grad_accum must be >= 1"),
    ("train-batch-not-divisible", ["train", "--config", TINY, "train.batch_size=6", "train.grad_accum=4"],
     "does not divide by grad_accum"),
    ("train-log-every-zero", ["train", "--config", TINY, "train.log_every=0"], "log_every must be >= 1"),
    ("train-stage-steps-zero", ["train", "--config", TINY, "stages.0.steps=0"], "steps must be >= 1"),
    ("train-stage-batch-zero", ["train", "--config", TINY, "stages.1.batch_size=-2"], "batch_size must be >= 1"),
    ("train-lr-zero", ["train", "--config", TINY, "stages.1.optim.learning_rate=0"], "learning_rate must be > 0"),
    ("train-seq-len-zero", ["train", "--config", TINY, "stages.0.data.seq_len=0"], "seq_len 0 is too small"),
    ("train-unknown-key", ["train", "--config", TINY, "train.bogus=1"], "unknown field(s) ['bogus']"),
    ("train-wrong-type", ["train", "--config", TINY, "train.steps=abc"], "expected an integer"),
    ("train-override-no-equals", ["train", "--config", TINY, "train.steps"], "expected dotted.key=value"),
    ("train-override-bad-index", ["train", "--config", TINY, "stages.5.steps=1"], "not an index"),
    ("train-mesh-zero", ["train", "--config", TINY, "mesh.data=0"], "mesh.data = 0"),
    ("train-checkpoint-every-zero", ["train", "--config", TINY, "checkpoint.every=0"], "every must be >= 1"),
    ("train-stage-out-of-range", ["train", "--config", TINY, "--stage", "5"], "--stage [5]"),
    ("train-stage-not-int", ["train", "--config", TINY, "--stage", "x"], "--stage"),
    # data stats
    ("data-seq-len-zero", ["data", "stats", "--data", "{traces}", "--tokenizer", TOK, "--seq-len", "0"],
     "seq_len 0 is too small"),
    ("data-packing-window-zero", ["data", "stats", "--data", "{traces}", "--tokenizer", TOK, "--seq-len", "64",
                                  "--packing-window", "0"], "packing_window"),
    ("data-batch-size-zero", ["data", "stats", "--data", "{traces}", "--tokenizer", TOK, "--seq-len", "64",
                              "--batch-size", "0"], "--batch-size 0"),
    ("data-file-missing", ["data", "stats", "--data", "nope.jsonl", "--tokenizer", TOK, "--seq-len", "64"],
     "nope.jsonl"),
    ("data-tokenizer-dir-missing", ["data", "stats", "--data", "{traces}", "--tokenizer", "/no/such/tok",
                                    "--seq-len", "64"], "tokenizer not found: /no/such/tok"),
    ("data-tiktoken-missing", ["data", "stats", "--data", "{traces}", "--tokenizer", "q.tiktoken", "--seq-len", "64"],
     "q.tiktoken"),
    ("data-empty-file", ["data", "stats", "--data", "{empty}", "--tokenizer", TOK, "--seq-len", "64"],
     "empty.jsonl"),
    ("data-empty-file-strict", ["data", "stats", "--data", "{traces}", "{empty}", "--tokenizer", TOK, "--seq-len",
                                "64", "--strict"], "empty data file"),
    ("data-bad-record-strict", ["data", "stats", "--data", "{bad_trace}", "--tokenizer", TOK, "--seq-len", "64",
                                "--strict"], "bad_trace.jsonl"),
    ("reformat-no-key", ["data", "reformat", "--input", "{bench}", "--out", "{tmp}/o.jsonl"], "OPENAI_API_KEY"),
    # grade
    ("grade-predictions-missing", ["grade", "--benchmark", "aime24", "--data", "{bench}", "--predictions", "nope"],
     "nope"),
    ("grade-data-missing", ["grade", "--benchmark", "aime24", "--data", "nope.jsonl", "--predictions", "{pred_one}"],
     "nope.jsonl"),
    ("grade-empty-predictions", ["grade", "--benchmark", "aime24", "--data", "{bench}", "--predictions", "{empty}"],
     "no predictions"),
    ("grade-malformed-prediction", ["grade", "--benchmark", "aime24", "--data", "{bench}", "--predictions",
                                    "{pred_bad}"], "pred_bad.jsonl:1"),
    ("grade-index-out-of-range", ["grade", "--benchmark", "aime24", "--data", "{bench}", "--predictions",
                                  "{pred_range}"], "problem_index 7"),
    ("grade-bench-malformed", ["grade", "--benchmark", "aime24", "--data", "{bad_bench}", "--predictions",
                               "{pred_one}"], "bad_bench.jsonl:1"),
    ("grade-bench-no-answer", ["grade", "--benchmark", "aime24", "--data", "{noans}", "--predictions", "{pred_one}"],
     "missing field 'answer'"),
    ("grade-unknown-benchmark", ["grade", "--benchmark", "nosuch", "--predictions", "{pred_one}"],
     "not a known benchmark"),
    ("train-unknown-preset", ["train", "--config", TINY, "model.preset=nosuch"], "unknown model preset 'nosuch'"),
    ("plan-unknown-preset", ["plan", "--model", "nosuch", "--topology", "v5p-8"], "unknown model preset 'nosuch'"),
    # eval, convert
    ("eval-tokenizer-missing", ["eval", "--model", "/no/model", "--tokenizer", "/no/tok", "--benchmark", "aime24",
                                "--data", "{bench}", "--out", "{tmp}/e"], "tokenizer not found: /no/tok"),
    ("eval-model-missing", ["eval", "--model", "/no/model", "--benchmark", "aime24", "--data", "{bench}", "--out",
                            "{tmp}/e"], "/no/model"),
    ("convert-source-missing", ["convert", "--from", "/no/src", "--to", "{tmp}/c"], "/no/src"),
    # plan, cost, demo
    ("plan-unknown-topology", ["plan", "--model", "qwen2.5-math-7b", "--topology", "v9-8"], "unknown TPU topology"),
    ("plan-bad-slice", ["plan", "--model", "qwen2.5-math-7b", "--topology", "v5p-7"], "v5p"),
    ("cost-config-missing", ["cost", "--config", "nope.yaml"], "nope.yaml"),
    ("cost-prices-missing", ["cost", "--config", TINY, "--prices", "noprices.yaml"], "noprices.yaml"),
    ("cost-bad-override", ["cost", "--config", TINY, "train.steps=0"], "steps must be >= 1"),
    ("demo-steps-negative", ["demo", "--stage1-steps", "-1"], "--stage1-steps -1"),
    ("demo-heldout-zero", ["demo", "--heldout", "0"], "--heldout 0"),
]


@pytest.mark.parametrize("name,argv,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line(name, argv, needle, files, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("JAX_DISTILL_DEBUG", raising=False)
    t0 = time.monotonic()
    rc = main([a.format(**files) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not any(n in ln for n in NOISE)]
    assert rc not in (0, None), f"{name}: exit {rc}, stderr {err!r}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"{name}: expected one line on stderr, got {lines}"
    assert needle in lines[0], f"{name}: {needle!r} not in {lines[0]!r}"
    assert time.monotonic() - t0 < 10


def test_grade_warns_about_problems_without_predictions(files, capsys):
    rc = main(["grade", "--benchmark", "aime24", "--data", files["bench"], "--predictions", files["pred_one"]])
    captured = capsys.readouterr()
    assert rc == 0
    assert "2 of 3 aime24 problems have no prediction" in captured.err
    assert "pass@1 |" in captured.out and "pass@1 | pass@1" not in captured.out
    assert "output-token budget" not in captured.out  # no empty budget table


def test_data_stats_warns_about_an_empty_file_by_name(files, capsys, caplog, monkeypatch):
    monkeypatch.chdir(REPO)
    rc = main(["data", "stats", "--data", files["traces"], files["empty"], "--tokenizer", TOK, "--seq-len", "64"])
    assert rc == 0
    assert "empty.jsonl" in caplog.text + capsys.readouterr().err


def test_hub_unreachable_fails_fast(files, capsys, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    for cmd in (["grade", "--benchmark", "aime24", "--predictions", files["pred_one"]],
                ["eval", "--model", "m", "--benchmark", "aime24", "--out", files["tmp"] + "/e"]):
        rc = main(cmd)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "offline" in err[0] and "--data FILE" in err[0], err
    assert time.monotonic() - t0 < 10


def test_debug_flag_and_env_show_the_traceback(monkeypatch):
    monkeypatch.chdir(REPO)
    from jax_distill.config import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "train", "--config", "nope.yaml"])
    monkeypatch.setenv("JAX_DISTILL_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(["train", "--config", "nope.yaml"])


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    import jax_distill.eval.grade_cli as grade_cli

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(grade_cli, "run", boom)
    with pytest.raises(RuntimeError):
        main(["grade", "--benchmark", "b", "--predictions", "p"])


def test_help_shows_defaults_and_an_example(capsys):
    assert main(["eval", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 4096)" in out and "example:" in out and "jax-distill eval" in out


SUBPROCESS_CASES = [
    (["grade", "--benchmark", "aime24", "--data", "nope.jsonl", "--predictions", "p.jsonl"], "nope.jsonl"),
    (["train", "--config", TINY, "--bogus"], "--bogus"),
    (["data", "stats", "--data", "x", "--tokenizer", TOK, "--seq-len", "0"], "seq_len 0"),
]


@pytest.mark.parametrize("argv,needle", SUBPROCESS_CASES, ids=["grade-missing", "bad-flag", "seq-len-zero"])
def test_subprocess_one_line(argv, needle):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "jax_distill.cli", *argv], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not any(n in ln for n in NOISE)]
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "INVALID_ARGUMENT" not in p.stderr
    assert len(lines) == 1 and needle in lines[0], lines
    assert time.monotonic() - t0 < 10


def test_gcs_without_credentials_fails_fast(files, capsys, monkeypatch, tmp_path):
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "CLOUDSDK_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{_closed_port()}")
    monkeypatch.chdir(REPO)
    t0 = time.monotonic()
    rc = main(["data", "stats", "--data", "gs://no-bucket/t.jsonl", "--tokenizer", TOK, "--seq-len", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no GCS credentials for gs://no-bucket" in err[0], err
    assert "GOOGLE_APPLICATION_CREDENTIALS" in err[0] and time.monotonic() - t0 < 10
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    assert main(["data", "stats", "--data", "gs://no-bucket/t.jsonl", "--tokenizer", TOK, "--seq-len", "64"]) == 2
    assert "missing.json: file not found" in capsys.readouterr().err


def test_hub_offline_mode_without_cache(files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    t0 = time.monotonic()
    rc = main(["grade", "--benchmark", "aime24", "--predictions", files["pred_one"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "HF_HUB_OFFLINE" in err[0] and "--data FILE" in err[0], err
    assert time.monotonic() - t0 < 10
