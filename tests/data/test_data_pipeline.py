"""The trace pipeline on real files, the real Qwen vocabulary and a real GCS emulator."""

import json

import numpy as np
import pytest

from jax_distill.cli import main
from jax_distill.data.config import DataConfig
from jax_distill.data.pipeline import build_iterator, load_documents
from jax_distill.data.records import BadRecordError
from jax_distill.data.sources import host_share, list_files
from jax_distill.data.tokenize import load_tokenizer


@pytest.fixture(scope="module")
def qwen(qwen_tiktoken):
    return load_tokenizer(str(qwen_tiktoken))


def write_traces(path, n, seed=0, long_every=0):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            steps = " ".join(f"Step {j}: {rng.integers(100)} + {rng.integers(100)}." for j in range(rng.integers(2, 30)))
            if long_every and i % long_every == 0:
                steps *= 20
            f.write(json.dumps({"id": f"t{i}", "problem": f"Problem {i}: add things.", "response": f"{steps} \\boxed{{{i}}}",
                                "answer": str(i)}) + "\n")
    return path


def test_real_qwen_tokenization_and_chat_mask(qwen):
    assert qwen.encode("Hello world") == [9707, 1879]
    assert (qwen.im_start_id, qwen.eos_id, qwen.pad_id) == (151644, 151645, 151643)
    ids, mask = qwen.encode_chat([{"role": "user", "content": "What is 1+1?"},
                                  {"role": "assistant", "content": "It is \\boxed{2}."}])
    text = qwen.decode(ids)
    assert text == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\nIt is \\boxed{2}.<|im_end|>\n")
    learned = [t for t, m in zip(ids, mask) if m]
    assert qwen.decode(learned) == "It is \\boxed{2}.<|im_end|>"
    # Special-token text inside content is data, never a control token.
    assert qwen.im_end_id if False else qwen.eos_id not in qwen.encode("<|im_end|>")


def test_packed_batches_match_their_documents(tmp_path, qwen):
    path = write_traces(tmp_path / "t.jsonl", 40)
    cfg = DataConfig(paths=[str(path)], tokenizer="", seq_len=256, shuffle=False, num_epochs=1)
    docs, _ = load_documents(cfg, qwen)
    by_ids = {tuple(d["input_ids"].tolist()): d for d in docs}
    it = build_iterator(cfg, qwen, batch_size=4, seed=0)
    seen = 0
    for batch in it:
        for r in range(4):
            seg, pos = batch["segment_ids"][r], batch["positions"][r]
            for s in set(seg.tolist()) - {0}:
                idx = np.where(seg == s)[0]
                assert (np.diff(idx) == 1).all()
                np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
                doc = by_ids[tuple(batch["input_ids"][r, idx].tolist())]
                np.testing.assert_array_equal(batch["targets"][r, idx], doc["targets"])
                np.testing.assert_array_equal(batch["loss_mask"][r, idx], doc["loss_mask"])
                seen += 1
            assert (batch["loss_mask"][r][seg == 0] == 0).all()
    assert seen == len(docs)
    assert it.report()["packing_efficiency"] > 0.6


def test_restored_iterator_yields_exactly_the_same_batches(tmp_path, qwen):
    path = write_traces(tmp_path / "t.jsonl", 30)
    cfg = DataConfig(paths=[str(path)], tokenizer="", seq_len=128, num_epochs=None)
    a = build_iterator(cfg, qwen, batch_size=3, seed=5)
    for _ in range(7):  # into the second epoch of a shuffled, packed stream
        next(a)
    state = json.loads(json.dumps(a.get_state()))  # must survive JSON, as in the checkpoint
    expected = [next(a) for _ in range(6)]
    b = build_iterator(cfg, qwen, batch_size=3, seed=5)
    b.set_state(state)
    for want in expected:
        got = next(b)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    c = build_iterator(cfg, qwen, batch_size=3, seed=6)  # another seed, another order
    assert any((next(c)["input_ids"] != x["input_ids"]).any() for x in expected[:1])


def test_bad_input_corpus_is_fully_accounted(tmp_path, qwen):
    good = {"problem": "p", "response": "r \\boxed{1}"}
    lines = [json.dumps(good).encode(), b'{"problem": "p", "response": ', b'\xff\xfe{"bad utf8": 1}',
             json.dumps({"problem": "p"}).encode(), json.dumps({"problem": 3, "response": "x"}).encode(),
             json.dumps({"problem": "p", "response": "   "}).encode(),
             json.dumps({"problem": "p", "response": "no answer here"}).encode(), b"[1, 2]",
             json.dumps({"problem": "p", "response": "long " * 400 + "\\boxed{2}"}).encode(),
             json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\\boxed{3}"}]}).encode(),
             json.dumps({"messages": "oops"}).encode(), b"", json.dumps(good).encode()]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    cfg = DataConfig(paths=[str(path)], tokenizer="", seq_len=128, require_boxed=True, overlong="drop")
    docs, report = load_documents(cfg, qwen)
    r = report.as_dict()
    assert r["records"] == 12  # the blank line is not a record
    assert r["skipped"] == {"malformed_json": 1, "invalid_utf8": 1, "missing_field": 1, "wrong_type": 2,
                            "empty_response": 1, "no_boxed_answer": 1, "not_an_object": 1, "overlong": 1}
    assert r["kept"] == 3 == len(docs)
    assert r["records"] == r["kept"] + sum(r["skipped"].values())
    with pytest.raises(BadRecordError, match=r"bad\.jsonl:2: malformed JSON"):
        load_documents(DataConfig(paths=[str(path)], tokenizer="", seq_len=128, strict=True), qwen)
    path2 = tmp_path / "bad2.jsonl"
    path2.write_text(json.dumps({"problem": 3, "response": "x"}) + "\n")
    with pytest.raises(BadRecordError, match=r"bad2\.jsonl:1: field 'problem' must be a string"):
        load_documents(DataConfig(paths=[str(path2)], tokenizer="", seq_len=128, strict=True), qwen)


def test_truncation_is_counted_and_missing_paths_fail(tmp_path, qwen):
    path = write_traces(tmp_path / "t.jsonl", 10, long_every=3)
    full, _ = load_documents(DataConfig(paths=[str(path)], tokenizer="", seq_len=100_000), qwen)
    expected = sum(len(d["input_ids"]) > 200 for d in full)
    docs, report = load_documents(DataConfig(paths=[str(path)], tokenizer="", seq_len=200), qwen)
    assert 4 <= expected < 10
    assert report.read.truncated == expected and len(docs) == 10
    assert max(len(d["input_ids"]) for d in docs) == 200
    with pytest.raises(FileNotFoundError, match="data path not found"):
        list_files([str(tmp_path / "nope.jsonl")])
    with pytest.raises(FileNotFoundError, match="matched no files"):
        list_files([str(tmp_path / "*.parquet")])


def test_files_split_across_hosts_disjointly(tmp_path):
    for i in range(5):
        write_traces(tmp_path / f"part-{i}.jsonl", 2, seed=i)
    files = list_files([str(tmp_path / "*.jsonl")])
    shares = [host_share(files, i, 2) for i in range(2)]
    assert sorted(shares[0] + shares[1]) == files and not set(shares[0]) & set(shares[1])
    with pytest.raises(ValueError, match="at least one file"):
        host_share(files, 0, 8)


def test_parquet_and_chat_form(tmp_path, qwen):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a", "b"], "completion": ["x \\boxed{1}", "y \\boxed{2}"]}),
                   tmp_path / "t.parquet")
    docs, report = load_documents(DataConfig(paths=[str(tmp_path / "t.parquet")], tokenizer="", seq_len=64), qwen)
    assert report.read.kept == 2 and len(docs) == 2


def test_gcs_emulator_with_injected_faults_keeps_exact_counts(tmp_path, qwen, monkeypatch, gcs):
    from tests.data.gcs_emulator import FaultyProxy

    gcs.make_bucket("traces")
    with FaultyProxy(gcs.port, every=3) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{proxy.port}")
        from jax_distill.data.sources import filesystem

        fs, _ = filesystem("gs://traces")
        for i in range(3):
            local = write_traces(tmp_path / f"p{i}.jsonl", 7, seed=i)
            fs.put(str(local), f"traces/run/p{i}.jsonl")
        fs.invalidate_cache()
        cfg = DataConfig(paths=["gs://traces/run/*.jsonl"], tokenizer="", seq_len=256)
        docs, report = load_documents(cfg, qwen)
        assert report.read.records == 21 and report.read.kept == 21 and len(docs) == 21
        assert proxy.faults > 0  # faults really happened and were retried
        with pytest.raises(FileNotFoundError, match="gs://missing-bucket"):
            list_files(["gs://missing-bucket/x/*.jsonl"])


def test_data_stats_cli_json(tmp_path, qwen_tiktoken, capsys):
    path = write_traces(tmp_path / "t.jsonl", 30)
    (tmp_path / "t.jsonl").open("a").write("{broken\n")
    assert main(["data", "stats", "--data", str(path), "--tokenizer", str(qwen_tiktoken), "--seq-len", "512",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["records"] == 31 and out["kept"] == 30 and out["skipped"] == {"malformed_json": 1}
    assert out["tokens"] > 0 and 0 < out["packing_efficiency"] <= 1 and out["tokens_per_second"] > 0
    assert out["packing_efficiency"] > out["padded_efficiency"]


def test_worker_processes_are_deterministic_lose_nothing_and_resume(tmp_path, qwen):
    """grain worker processes (worker_count > 0) each pack a slice of the documents: the batches differ from the
    in-process order, but they are the same on every run, an epoch still holds every token exactly once, and the
    checkpointed state restores exactly."""
    path = write_traces(tmp_path / "t.jsonl", 40)
    base = dict(paths=[str(path)], tokenizer="", seq_len=128)

    def epoch_tokens(workers):
        it = build_iterator(DataConfig(**base, num_epochs=1, worker_count=workers), qwen, batch_size=4, seed=3)
        return sorted(int(t) for b in it for t, s in zip(b["input_ids"].ravel(), b["segment_ids"].ravel()) if s)

    assert epoch_tokens(2) == epoch_tokens(0)  # the same multiset of real tokens: nothing dropped or repeated
    cfg = DataConfig(**base, num_epochs=None, worker_count=2)
    ref = build_iterator(cfg, qwen, batch_size=4, seed=3)
    want = [next(ref) for _ in range(8)]
    mp = build_iterator(cfg, qwen, batch_size=4, seed=3)
    got = [next(mp) for _ in range(4)]
    state = json.loads(json.dumps(mp.get_state()))
    resumed = build_iterator(cfg, qwen, batch_size=4, seed=3)
    resumed.set_state(state)
    got += [next(resumed) for _ in range(4)]
    for w, g in zip(want, got):
        for k in w:
            np.testing.assert_array_equal(g[k], w[k])
