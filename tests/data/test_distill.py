"""`jax-distill data distill` against a scripted OpenAI-compatible server on 127.0.0.1 (correct, wrong, truncated,
unboxed, duplicate, slow, 429/500 then success, malformed JSON), output on the GCS emulator; a crash between a
shard's two writes and a rerun; decontamination against the real MATH-500; the output read by `data stats` and
trained on; the open-teacher path on a tiny random model; the data-generation line of `jax-distill cost`."""

import http.server
import json
import re
import threading
import time
from collections import Counter

import pytest

from jax_distill.cli import main
from jax_distill.data.sources import read_bytes
from tests.conftest import REPO_ROOT
from tests.data.gcs_emulator import free_port

TOK = str(REPO_ROOT / "configs" / "tiny_data" / "tokenizer")
WORDS = ["so", "we", "add", "the", "two", "numbers", "carefully", "and", "then", "we", "check", "the", "sum", "once", "more", "by", "counting", "up"]


def _long(answer, v=0):
    """A long (60 words) trace ending in its box; variants ``v`` share no run of 5 words."""
    stride = (5, 7, 11, 13)[v]
    body = " ".join(WORDS[(i * stride + v) % len(WORDS)] for i in range(60))
    return f"{body}\n\nTherefore, the final answer is $\\boxed{{{answer}}}$."


def _script(a, b):
    """Responses by seed (= sample index) for "What is a + b?": (text, reasoning, finish_reason)."""
    s = a + b
    near = _long(s).replace("carefully", "slowly", 1)
    return {
        1: [(_long(s), None, "stop"), (_long(s), None, "stop"), (near, None, "stop"),
            (f"Count: {a}, then {b} more gives {s}. So $\\boxed{{{s}}}$.", None, "stop")],
        3: [(f"$\\boxed{{{s + 1}}}$", None, "stop"), (_long(s, 1), None, "stop"),
            (_long(s, 2)[:80], None, "length"), ("I think it is seven.", None, "stop")],
        5: [(f"The sum is $\\boxed{{{s + k}}}$.", None, "stop") for k in (1, 2, 3, 4)],
        7: [(f"The answer is $\\boxed{{{s}}}$.", f"thinking {k}: {a} plus {b} is {s}", "stop") for k in range(4)],
        9: [(_long(s, k), None, "stop") for k in range(4)],
        13: [(f"$\\boxed{{{s}}}$ " + "and now a long digression " * 20, None, "stop"),
             (_long(s, 3) + " " + "more words " * 200 + f"$\\boxed{{{s}}}$", None, "stop"),
             (_long(s, 2), None, "stop"), (_long(s, 2).replace("check", "verify", 1), None, "stop")],
    }.get(a)


class TeacherServer:
    """Scripted /v1/chat/completions. "7 + 8": each sample first gets a 429, then a 500, then its answer. "9 + 10":
    each sample's first attempt is slower than the client timeout. "11 + 12": always a malformed JSON body. Counts
    requests, answered usage and the most requests in flight."""

    def __init__(self):
        self.port, self.requests, self.inflight, self.max_inflight = free_port(), 0, 0, 0
        self.delay = 0.02  # seconds per answer
        self.usage = Counter()  # over answered (200, valid) responses, by problem
        self.attempts = Counter()
        lock, srv = threading.Lock(), self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, data: bytes):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                try:
                    self._answer()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow answer
                    pass

            def _answer(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user, seed = body["messages"][-1]["content"], body["seed"]
                assert body["max_completion_tokens"] == 32768 and "max_tokens" not in body
                a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", user).groups())
                with lock:
                    srv.requests += 1
                    srv.inflight += 1
                    srv.max_inflight = max(srv.max_inflight, srv.inflight)
                    srv.attempts[(a, seed)] += 1
                    attempt = srv.attempts[(a, seed)]
                try:
                    time.sleep(srv.delay)
                    if a == 7 and attempt <= 2:
                        return self._send(429 if attempt == 1 else 500, b'{"error": {"message": "injected"}}')
                    if a == 9 and attempt == 1:  # the client times out and retries; this one no longer counts
                        with lock:
                            srv.inflight -= 1
                        time.sleep(1.5)
                        with lock:
                            srv.inflight += 1  # balanced by the finally below
                        return
                    if a == 11:
                        return self._send(200, b'{"id": "x", "choices": [{"message": ')
                    text, reasoning, finish = _script(a, b)[seed]
                    p, c = len(user.split()) + 7, len(text.split()) + len((reasoning or "").split())
                    r = len((reasoning or "").split())
                    with lock:
                        srv.usage[(a, "p")] += p
                        srv.usage[(a, "c")] += c
                        srv.usage[(a, "r")] += r
                    msg = {"role": "assistant", "content": text}
                    if reasoning:
                        msg["reasoning_content"] = reasoning
                    self._send(200, json.dumps({
                        "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": finish, "message": msg}],
                        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                                  "completion_tokens_details": {"reasoning_tokens": r}}}).encode())
                finally:
                    with lock:
                        srv.inflight -= 1

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def teacher_server():
    s = TeacherServer()
    yield s
    s.close()


def _math500_row(i):
    return json.loads((REPO_ROOT.parent / "shared" / "data" / "eval" / "math500.jsonl").read_text().splitlines()[i])


def _problems():
    rows = [{"id": f"add{a}", "problem": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)}
            for a in (1, 3, 5, 7, 9, 11, 13)]
    planted = _math500_row(27)["problem"]  # the bake sale
    planted = re.sub(r"\d+", lambda m: str(int(m.group()) + 3), planted)  # the numbers reworded
    rows += [
        {"id": "fig", "problem": "In the diagram below, what is 2 + 3?", "answer": "5"},
        {"id": "proof", "problem": "Prove that 2 + 2 = 4.", "answer": "4"},
        {"id": "noans", "problem": "What is 4 + 5?"},
        {"id": "empty", "problem": "", "answer": "1"},
        {"id": "dup", "problem": "What is  1 + 2 ?", "answer": "3"},  # add1 again, spacing aside
        {"id": "planted", "problem": planted, "answer": "7"},
    ]
    return rows


def test_distill_api_teacher_to_gcs_with_crash_and_resume(tmp_path, teacher_server, gcs, monkeypatch, capsys):
    from jax_distill.distill import pipeline
    from jax_distill.paths import as_path

    gcs.make_bucket("distill")
    src = "gs://distill/problems/part-0.jsonl"  # problems in the bucket too
    as_path(src).write_text("".join(json.dumps(r) + "\n" for r in _problems()))
    out = "gs://distill/run1"
    monkeypatch.setenv("TEST_KEY", "k")
    cmd = ["data", "distill", "--input", src, "--out", out, "--endpoint", teacher_server.url, "--model", "r1",
           "--api-key-env", "TEST_KEY", "--concurrency", "3", "--cache", str(tmp_path / "cache.jsonl"),
           "--tokenizer", TOK, "--samples", "4", "--max-per-problem", "2", "--decontam", "math500",
           "--eval-dir", str(REPO_ROOT.parent / "shared" / "data" / "eval"), "--json",
           "shard_problems=2", "filters.max_tokens=300", "filters.near_duplicate=0.8", "teacher.timeout=0.8", "teacher.max_retries=3",
           "teacher.price_input=2.0", "teacher.price_output=8.0"]

    # A crash between shard 1's traces file and its meta (the commit mark).
    real = pipeline.write_atomic

    def crash(path, data):
        if path.name == "traces-00001.meta.json":
            raise KeyboardInterrupt("killed")
        real(path, data)

    monkeypatch.setattr(pipeline, "write_atomic", crash)
    monkeypatch.setenv("JAX_DISTILL_DEBUG", "1")
    with pytest.raises(KeyboardInterrupt):
        main(cmd)
    assert read_bytes(f"{out}/traces-00001.jsonl")  # the orphan exists
    first_requests = teacher_server.requests
    monkeypatch.setattr(pipeline, "write_atomic", real)
    capsys.readouterr()
    assert main(cmd) == 0
    rep = json.loads(capsys.readouterr().out)

    # Problems: every row accounted for; the planted MATH-500 problem found despite its changed numbers.
    pr = rep["problems"]
    assert pr["records"] == 13 and pr["skipped"] == {"contaminated": 1, "duplicate_problem": 1, "missing_field": 1,
                                                      "needs_figure": 1, "no_answer": 1, "proof": 1}
    assert pr["selected"] == 7 and pr["done"] == 6 and pr["pending"] == 1 and not rep["complete"]  # 11 + 12: malformed
    (removed,) = rep["decontamination"]["removed"]
    assert removed["id"] == "planted" and removed["set"] == "math500" and removed["index"] == 27
    assert rep["decontamination"]["sets"]["math500"]["problems"] == 500

    # Samples: each rejection by reason.
    s = rep["samples"]
    assert s["rejected"] == {"duplicate": 1, "near_duplicate": 2, "wrong_answer": 5, "truncated": 1,
                             "no_boxed_answer": 1, "box_not_final": 1, "too_long": 1, "over_keep_limit": 4}
    assert s["total"] == 24 and s["kept"] == 8 and s["kept"] + sum(s["rejected"].values()) == 24
    traces = []
    for sh in rep["shards"]:
        traces += [json.loads(x) for x in read_bytes(f"{out}/{sh['file']}").decode().splitlines()]
    ids = [t["id"] for t in traces]
    assert len(ids) == len(set(ids)) == 8  # nothing written twice
    assert Counter(t["problem_id"] for t in traces) == {"add1": 2, "add3": 1, "add7": 2, "add9": 2, "add13": 1}
    assert rep["orphans_removed"] == [f"{out}/traces-00001.jsonl"]
    by = {t["id"]: t for t in traces}
    assert by["add3#1"]["pass_rate"] == 0.25 and by["add3#1"]["difficulty"] == 0.75
    assert by["add7#0"]["response"].startswith("<think>\nthinking 0: 7 plus 8 is 15\n</think>\n\nThe answer is")
    assert rep["pass_rate"]["histogram"]["0"] == 1  # 5 + 6: all wrong

    # Retries (429 then 500, and a timeout) and the concurrency limit; the rerun paid only for what was not cached.
    # Run 1 sampled shards 0-1 (add1, add3 | add5, add7), then died before committing shard 1; run 2 took shard 1's
    # 8 samples from the cache and asked only for add9, add11, add13.
    assert first_requests == 16 + 8
    assert [teacher_server.attempts[(7, k)] for k in range(4)] == [3] * 4  # 429, 500, answer
    assert rep["this_run"]["cache_hits"] == 8 and rep["this_run"]["requests"] == 12
    assert rep["teacher"]["retries"] == 4 and rep["this_run"]["failed_requests"] == 4  # 4 timeouts; add11 x4
    assert teacher_server.max_inflight <= 3
    assert teacher_server.attempts[(11, 0)] == 1  # a malformed body is a failure, not retried blindly
    # Exact token and cost totals: the done problems' answered usage, each response paid once.
    done = (1, 3, 5, 7, 9, 13)
    p, c, r = (sum(teacher_server.usage[(a, k)] for a in done) for k in "pcr")
    assert rep["tokens"]["teacher_prompt"] == p and rep["tokens"]["teacher_completion"] == c
    assert rep["tokens"]["teacher_reasoning"] == r > 0
    assert rep["teacher_cost"]["usd"] == pytest.approx((p * 2.0 + c * 8.0) / 1e6)
    assert sum(teacher_server.attempts[(a, k)] for a in done for k in range(4)) == 24 + 4 * 2 + 4

    # A third run has nothing to do but the malformed problem: no new traces, no duplicate.
    capsys.readouterr()
    assert main(cmd) == 0
    rep3 = json.loads(capsys.readouterr().out)
    assert rep3["this_run"]["cache_hits"] == 0 and rep3["this_run"]["requests"] == 4
    assert rep3["samples"] == s and len(rep3["shards"]) == len(rep["shards"])

    # Resuming with other settings would mix two recipes in one dataset: refused, naming the way out.
    monkeypatch.delenv("JAX_DISTILL_DEBUG")
    capsys.readouterr()
    assert main([*cmd, "--samples", "3"]) == 2
    assert "'samples': '4 there, 3 now'" in capsys.readouterr().err

    # The report is also in the bucket, and the traces are training data.
    assert json.loads(read_bytes(f"{out}/distill_report.json"))["samples"] == s
    capsys.readouterr()
    assert main(["data", "stats", "--data", f"{out}/traces-*.jsonl", "--tokenizer", TOK, "--seq-len", "512",
                 "--require-boxed", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["records"] == stats["kept"] == 8 and stats["skipped"] == {}

    # The teacher's dollars are the data-generation line of `jax-distill cost`.
    capsys.readouterr()
    cost_cmd = ["cost", "--config", str(REPO_ROOT / "configs" / "qwen2.5-math-7b_v5p-16.yaml"), "--json"]
    assert main(cost_cmd) == 0
    base = {(ln["chip"], ln["pricing"]): ln["cost_usd"] for ln in json.loads(capsys.readouterr().out)["lines"]}
    assert main([*cost_cmd, "--distill-report", f"{out}/distill_report.json"]) == 0
    cost = json.loads(capsys.readouterr().out)
    assert cost["data_generation"]["api_usd"] == rep["teacher_cost"]["usd"] > 0
    for ln in cost["lines"]:
        assert ln["data_api_usd"] == rep["teacher_cost"]["usd"] and ln["data_chip_hours"] == 0
        assert ln["cost_usd"] == pytest.approx(base[(ln["chip"], ln["pricing"])] + rep["teacher_cost"]["usd"])

    # ... and train: stage 2 of the tiny config on the bucket's traces, two steps.
    run = tmp_path / "train"
    assert main(["train", "--config", str(REPO_ROOT / "configs" / "tiny_cpu.yaml"), "--no-progress", "--stage", "2",
                 "train.steps=2", f"stages.1.data.paths=[{out}/traces-*.jsonl]", "stages.1.data.seq_len=128",
                 f"output_dir={run}", f"checkpoint.dir={run}/ck"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["loss"] > 0 for r in rows if "loss" in r)


def test_distill_sigkill_then_rerun_writes_nothing_twice(tmp_path, teacher_server):
    """A real process killed with SIGKILL after its first shard is committed, then the same command again: every
    problem's traces once, the killed run's answers taken from the cache (at most the in-flight ones asked again)."""
    import os
    import signal
    import subprocess
    import sys

    rows = [{"id": f"add{a}", "problem": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in (1, 3, 5, 13)]
    src = tmp_path / "problems.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    teacher_server.delay = 0.4  # slow enough to kill the run between shards
    cmd = [sys.executable, "-m", "jax_distill.cli", "data", "distill", "--input", str(src), "--out", str(out),
           "--endpoint", teacher_server.url, "--model", "r1", "--api-key-env", "TEST_KEY", "--concurrency", "2",
           "--cache", str(tmp_path / "cache.jsonl"), "--tokenizer", TOK, "--samples", "4", "--json",
           "shard_problems=1", "filters.max_tokens=300", "teacher.timeout=5"]
    env = dict(os.environ, TEST_KEY="k", JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "traces-00000.meta.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_requests = teacher_server.requests
    assert killed_requests < 16 and not (out / "distill_report.json").exists()
    teacher_server.delay = 0.02
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rep = json.loads(done.stdout)
    traces = [json.loads(x) for sh in rep["shards"] for x in (out / sh["file"]).read_text().splitlines()]
    ids = [t["id"] for t in traces]
    assert len(ids) == len(set(ids)) == rep["samples"]["kept"] > 0  # nothing written twice
    assert rep["problems"]["done"] == 4 and rep["complete"] and len(rep["shards"]) == 4
    # Every answer the killed run received was cached as it arrived; only requests in flight at the kill (at most
    # --concurrency) were asked again.
    assert 16 <= teacher_server.requests <= 16 + 2
    assert rep["this_run"]["cache_hits"] + rep["this_run"]["requests"] == 4 * 4 - 4  # shard 0 was committed


def test_example_config_and_usage_errors(tmp_path, capsys):
    """The YAML example loads into the schema; a missing input or tokenizer, or a bad value, is one line, exit 2."""
    from jax_distill.config import load_config
    from jax_distill.distill.config import DistillConfig

    cfg = load_config(DistillConfig, REPO_ROOT / "configs" / "distill_example.yaml", ["samples=8"])
    assert cfg.samples == 8 and cfg.teacher.model == "deepseek-reasoner" and len(cfg.decontam.sets) == 4
    # Flags alone (no file, no dotted override opening their sections) reach their nested fields.
    from jax_distill.cli import build_parser
    from jax_distill.distill.cli import build_config

    flags = build_config(build_parser().parse_args(["data", "distill", "--input", "x.jsonl", "--out", str(tmp_path),
                                                    "--tokenizer", TOK, "--model", "qwq", "--mesh", "data=2"]))
    assert (flags.filters.tokenizer, flags.teacher.model, flags.teacher.mesh) == (TOK, "qwq", "data=2")
    for argv, message in [
        (["--out", str(tmp_path), "--tokenizer", TOK], "no --input given"),
        (["--input", "x.jsonl", "--out", str(tmp_path)], "no student tokenizer"),
        (["--input", "x.jsonl", "--out", str(tmp_path), "--tokenizer", TOK, "filters.near_duplicate=0"],
         "filters.near_duplicate"),
        (["--input", "x.jsonl", "--out", str(tmp_path), "--tokenizer", TOK, "sample=3"], "unknown field"),
    ]:
        capsys.readouterr()
        assert main(["data", "distill", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_decontamination_index_on_math500():
    """Every MATH-500 problem matches itself and its copy with other numbers; other problems do not match."""
    from jax_distill.distill.decontam import NgramIndex, normalize_words

    rows = [json.loads(x) for x in (REPO_ROOT.parent / "shared" / "data" / "eval" / "math500.jsonl").read_text()
            .splitlines()]
    half = [r["problem"] for r in rows[:250]]
    index = NgramIndex({"math500": half}, n=13)
    assert normalize_words("Find $x$ if $3x + 12 = \\frac{5}{2}$.") == ["find", "x", "if", "#", "x", "#", "frac", "#",
                                                                       "#"]
    for i, text in enumerate(half):
        reworded = re.sub(r"\d+", lambda m: str(int(m.group()) * 2 + 1), text)
        hit = index.match(reworded)
        assert hit is not None and hit.set == "math500" and hit.index == i, (i, text)
    # The other half of MATH-500 shares topics and phrasing, not 13-word runs: only 2 templated twins match.
    false = [r["problem"] for r in rows[250:] if index.match(r["problem"])]
    assert len(false) == 2 and "quotient when $x^9 + 1$ is divided by $x - 1" in " ".join(false), false
    assert index.match("What is 1 + 2?") is None


# A word-level vocabulary small enough that a random model writes "\boxed{3}" and stops now and then.
OPEN_VOCAB = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]", "\\boxed{3}", "\\boxed{4}", "so", "the",
              "answer", "is", "What", "1", "+", "2", "?", "3", "user", "assistant"]


@pytest.fixture(scope="module")
def open_teacher_dir(tmp_path_factory):
    """A tiny random Qwen2 checkpoint (HF layout) and its word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from jax_distill.model.config import ModelConfig
    from jax_distill.model.hf_io import save_pretrained
    from jax_distill.model.qwen2 import init_model

    root = tmp_path_factory.mktemp("open_teacher")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(OPEN_VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(str(root / "tok"))
    cfg = ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(OPEN_VOCAB), head_dim=8, max_position_embeddings=256,
                      tie_word_embeddings=False, rope_theta=1e4, rms_norm_eps=1e-6, init_std=0.5, dtype="float32")
    save_pretrained(init_model(cfg.resolve()), root / "model")
    return root


def test_distill_open_teacher_is_deterministic(tmp_path, open_teacher_dir, capsys):
    """Traces sampled by our engine from a local checkpoint, graded and written; same seed, same bytes, on one device
    or a decode mesh."""
    src = tmp_path / "problems.jsonl"
    src.write_text(json.dumps({"id": "p", "problem": "What is 1 + 2 ?", "answer": "3"}) + "\n"
                   + json.dumps({"id": "q", "problem": "What is 2 + 2 ?", "answer": "4"}) + "\n")

    def run(out, seed, *extra):
        capsys.readouterr()
        assert main(["data", "distill", "--input", str(src), "--out", str(out), "--teacher", "open",
                     "--checkpoint", str(open_teacher_dir / "model"), "--tokenizer", str(open_teacher_dir / "tok"),
                     "--samples", "16", "--keep", "all", "--max-tokens", "10", "--json", "teacher.dtype=float32",
                     f"teacher.seed={seed}", "teacher.temperature=1.0", "teacher.top_p=1.0", "teacher.slots=32",
                     "teacher.compact=false",
                     "teacher.system_prompt=user", "filters.near_duplicate=1.0", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    rep = run(tmp_path / "a", 0)
    s = rep["samples"]
    assert s["total"] == 32 and s["kept"] + sum(s["rejected"].values()) == 32 and s["kept"] > 0
    assert rep["teacher"]["kind"] == "open" and rep["teacher"]["generated_tokens"] == rep["tokens"][
        "teacher_completion"] > 0 and rep["teacher_cost"]["usd"] == 0
    traces = [json.loads(x) for x in (tmp_path / "a" / "traces-00000.jsonl").read_text().splitlines()]
    assert len(traces) == s["kept"]
    for t in traces:  # every kept trace really boxes the reference answer last and stopped on its own
        assert t["response"].rstrip().endswith(f"\\boxed{{{t['answer']}}}") and t["finish_reason"] == "stop"
    # An open teacher's data-generation line: its generated tokens decoded at 2N FLOPs each, on every chip.
    capsys.readouterr()
    assert main(["cost", "--config", str(REPO_ROOT / "configs" / "qwen2.5-math-7b_v5p-16.yaml"), "--json",
                 "--distill-report", str(tmp_path / "a" / "distill_report.json")]) == 0
    cost = json.loads(capsys.readouterr().out)
    from jax_distill.hardware import CHIPS

    n_params = rep["teacher"]["param_count"]
    assert n_params > 0
    for ln in cost["lines"]:
        flops = 2 * n_params * rep["tokens"]["teacher_completion"]
        assert ln["data_chip_hours"] == pytest.approx(flops / (CHIPS[ln["chip"]].peak_bf16_flops * 0.05) / 3600)
        assert ln["data_api_usd"] == 0
    # Again on a (data=2, tensor=2) decode mesh: weights tensor-parallel, slots over data; the same bytes.
    rep_again = run(tmp_path / "b", 0, "--mesh", "data=2,tensor=2")
    assert rep_again["teacher"]["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2}
    assert rep_again["teacher"]["weight_devices"] == 4 and rep["teacher"]["weight_devices"] == 1
    assert (tmp_path / "b" / "traces-00000.jsonl").read_bytes() == (tmp_path / "a" / "traces-00000.jsonl").read_bytes()
    assert rep_again["samples"] == s
    rep_other = run(tmp_path / "c", 1)
    assert (tmp_path / "c" / "traces-00000.jsonl").read_bytes() != (tmp_path / "a" / "traces-00000.jsonl").read_bytes()
    assert rep_other["samples"]["total"] == 32
