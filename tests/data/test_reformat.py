"""Stage-1 reformatting: filters, the offline rule rewriter on real MATH-500 rows, and the endpoint rewriter against
a real OpenAI-compatible HTTP server on 127.0.0.1 (transient faults, concurrency limit, cache, token accounting)."""

import http.server
import json
import re
import threading
import time

import pytest

from jax_distill.cli import main
from jax_distill.data.config import DataConfig
from jax_distill.data.pipeline import load_documents
from jax_distill.data.reformat import (EndpointRewriter, RewriteCache, asks_for_proof, needs_figure,
                                       reformat)
from jax_distill.data.tokenize import load_tokenizer
from jax_distill.answers import extract_boxed, is_correct
from tests.data.gcs_emulator import free_port


def test_filters():
    assert needs_figure("In the diagram, $AB = 3$.") and needs_figure("[asy]draw((0,0)--(1,1));[/asy] Find $x$.")
    assert needs_figure("As shown in the Figure, ...") and not needs_figure("Find the configuration count.")
    assert asks_for_proof("Prove that $n^2 \\ge n$.") and asks_for_proof("Show that the sum is even.")
    assert not asks_for_proof("Compute $2+2$.")


def test_rule_rewriter_on_real_math500(tmp_path, shared_data, qwen_tiktoken, capsys):
    src = shared_data / "eval" / "math500.jsonl"
    out = tmp_path / "stage1" / "math500_rules.jsonl"
    assert main(["data", "reformat", "--input", str(src), "--out", str(out), "--rewriter", "rules", "--limit", "60",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["records"] == 60 and rep["kept"] + sum(rep["skipped"].values()) == 60
    rows = [json.loads(x) for x in src.read_text().splitlines()[:60]]
    n_fig = sum(needs_figure(r["problem"]) for r in rows)
    n_proof = sum(asks_for_proof(r["problem"]) and not needs_figure(r["problem"]) for r in rows)
    assert rep["skipped"].get("needs_figure", 0) == n_fig > 0
    assert rep["skipped"].get("proof", 0) == n_proof
    traces = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(traces) == rep["kept"] >= 45
    by_id = {r["unique_id"]: r for r in rows}
    for t in traces:
        assert t["response"].rstrip().endswith("$.") and re.search(r"^Step 1: ", t["response"], re.M)
        assert t["response"].count("\\boxed") == 1  # the solution's own boxes were unwrapped
        assert is_correct(extract_boxed(t["response"]), by_id[t["id"]]["answer"], "math")
    # The output is valid stage-1 data for the real pipeline: nothing skipped.
    docs, report = load_documents(DataConfig(paths=[str(out)], tokenizer="", seq_len=4096, require_boxed=True),
                                  load_tokenizer(str(qwen_tiktoken)))
    assert report.read.kept == len(traces) and not report.read.skipped


class ChatServer:
    """A small OpenAI-compatible /v1/chat/completions server. The first attempt at every problem gets a 503 (or a
    429); it answers with a numbered-step rewrite boxing the reference answer (a problem containing "MISMATCH" gets
    a wrong one), and counts requests, faults and the most requests in flight at once."""

    def __init__(self, delay: float = 0.05):
        self.port, self.requests, self.faults, self.inflight, self.max_inflight = free_port(), 0, 0, 0, 0
        self.usage = [0, 0]
        self.seen: set[str] = set()
        lock, srv = threading.Lock(), self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, obj, headers=()):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path.endswith("/chat/completions"), self.path
                user = body["messages"][-1]["content"]
                with lock:
                    srv.requests += 1
                    srv.inflight += 1
                    srv.max_inflight = max(srv.max_inflight, srv.inflight)
                    first = user not in srv.seen
                    srv.seen.add(user)
                try:
                    time.sleep(delay)
                    if first:
                        with lock:
                            srv.faults += 1
                        code = 429 if srv.faults % 2 else 503
                        return self._send(code, {"error": {"message": "injected", "type": "server_error"}},
                                          [("Retry-After", "0")])
                    answer = re.search(r"Reference answer: (.*)$", user).group(1)
                    if "MISMATCH" in user:
                        answer = "12345"
                    text = (f"We need the value asked for.\n\nStep 1: Work it out.\n\nStep 2: Check it.\n\n"
                            f"Therefore, the final answer is $\\boxed{{{answer}}}$.")
                    p, c = len(user.split()) + 50, len(text.split())
                    with lock:
                        srv.usage[0] += p
                        srv.usage[1] += c
                    self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": text}}],
                                     "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
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
def chat_server():
    s = ChatServer()
    yield s
    s.close()


ROWS = [{"problem": f"What is {a} + {b}?", "solution": f"Adding, {a} + {b} = {a + b}. So $\\boxed{{{a + b}}}$.",
         "id": f"add{a}"} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)]] + [
    {"problem": "In the diagram below, find $x$.", "solution": "$x=\\boxed{3}$"},
    {"problem": "Prove that there are infinitely many primes.", "solution": "Euclid."},
    {"problem": "Find $y$.", "solution": "It is what it is."},  # no answer anywhere
    {"problem": "MISMATCH: what is 2+2?", "solution": "$\\boxed{4}$"},
    {"problem": "", "solution": "$\\boxed{1}$"},
    {"question": "What is 6 times 7?", "solution": "Multiply.", "answer": 42},
]


def test_endpoint_rewriter_retries_limits_caches_and_accounts(tmp_path, chat_server):
    cache = tmp_path / "cache.jsonl"
    rw = EndpointRewriter(chat_server.url, "gpt-4o-mini", api_key="test", max_retries=4, timeout=10)
    kept, rep = reformat(ROWS, rw, source="toy", cache=RewriteCache(cache), concurrency=3,
                         price_in_per_m=0.15, price_out_per_m=0.60)
    assert rep.records == len(ROWS) == rep.kept + sum(rep.skipped.values())
    assert dict(rep.skipped) == {"needs_figure": 1, "proof": 1, "no_answer": 1, "answer_mismatch": 1,
                                 "missing_field": 1}
    assert [t["id"] for t in kept] == [f"add{a}" for a in (1, 3, 5, 7, 9, 11)] + ["toy:11"]
    assert kept[-1]["answer"] == "42" and extract_boxed(kept[-1]["response"]) == "42"
    # Every one of the 8 rewrites first met a 429/503 and was retried by the client; never more than 3 in flight.
    assert rep.api_calls == 8 and chat_server.faults == 8 and chat_server.requests == 16
    assert chat_server.max_inflight <= 3
    assert (rep.new_prompt_tokens, rep.new_completion_tokens) == tuple(chat_server.usage)
    assert rep.cost_usd == pytest.approx((chat_server.usage[0] * 0.15 + chat_server.usage[1] * 0.60) / 1e6)

    # A rerun resumes from the cache: no request, same result, nothing paid.
    before = chat_server.requests
    kept2, rep2 = reformat(ROWS, rw, source="toy", cache=RewriteCache(cache), concurrency=3)
    assert chat_server.requests == before and rep2.api_calls == 0 and rep2.cache_hits == 8
    assert kept2 == kept and rep2.cost_usd == 0 and rep2.prompt_tokens == rep.prompt_tokens

    # A torn last line (process killed mid-write) costs one request, not the cache.
    with cache.open("a") as f:
        f.write('{"key": "abc", "te')
    assert RewriteCache(cache).torn_lines == 1


def test_endpoint_failure_is_counted_not_fatal(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    rw = EndpointRewriter(dead, "m", api_key="k", max_retries=1, timeout=2)
    kept, rep = reformat(ROWS[:2], rw, source="toy", concurrency=2)
    assert kept == [] and rep.skipped == {"rewrite_failed": 2} and len(rep.errors) == 2
    with pytest.raises(ValueError, match="toy row 0: rewriter failed"):
        reformat(ROWS[:1], rw, source="toy", strict=True)


def test_reformat_cli_writes_to_gcs_emulator(tmp_path, chat_server, monkeypatch, capsys, gcs):
    src = tmp_path / "problems.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    gcs.make_bucket("stage1")
    monkeypatch.setenv("TEST_KEY", "k")
    assert main(["data", "reformat", "--input", str(src), "--out", "gs://stage1/math/part-0.jsonl",
                 "--endpoint", chat_server.url, "--api-key-env", "TEST_KEY", "--concurrency", "4",
                 "--cache", str(tmp_path / "c.jsonl"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["kept"] == 7 and rep["records"] == len(ROWS)
    from jax_distill.data.sources import read_bytes

    lines = read_bytes("gs://stage1/math/part-0.jsonl").decode().splitlines()
    assert [json.loads(x)["id"] for x in lines][:2] == ["add1", "add3"] and len(lines) == 7
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    capsys.readouterr()
    assert main(["data", "reformat", "--input", str(src), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "API key" in capsys.readouterr().err  # one line, no traceback (cli.main)
