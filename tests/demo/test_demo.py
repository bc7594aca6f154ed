"""The demo end to end (reduced), its teacher data and tokenizer, the run manifest, and the CLI's help."""

import json
import re

import pytest

from jax_distill.cli import COMMANDS, build_parser, main
from jax_distill.demo.synthetic import make_split
from jax_distill.answers import extract_boxed


def test_teacher_data_is_deterministic_disjoint_and_boxed():
    a, b = make_split("stage2", 50, seed=3), make_split("stage2", 50, seed=3)
    assert a == b and a != make_split("stage2", 50, seed=4)
    s1, held = make_split("stage1", 200), make_split("heldout", 50)
    assert not {r["problem"] for r in s1} & {r["problem"] for r in held}
    for r in s1 + a + held:
        assert extract_boxed(r["response"]) == r["answer"] and 0 <= int(r["answer"]) <= 999
    assert sum(len(r["response"]) for r in a) > 2 * sum(len(r["response"]) for r in s1[:50])
    assert any("Wrong, redo" in r["response"] for r in a)  # some traces backtrack


def test_demo_tokenizer_round_trips_and_keeps_specials(tmp_path):
    from jax_distill.data.tokenize import load_tokenizer
    from jax_distill.demo.tokenizer import train_demo_tokenizer

    recs = make_split("stage2", 300)
    tok = load_tokenizer(str(train_demo_tokenizer((r["response"] for r in recs), tmp_path / "tok", 400)))
    text = recs[0]["response"]
    assert tok.decode(tok.encode(text)) == text
    ids, mask = tok.encode_chat([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert ids.count(tok.im_start_id) == 3 and ids.count(tok.eos_id) == 3 and tok.vocab_size <= 400
    assert all(len(tok.encode(d)) == 1 for d in "0123456789")


def test_reduced_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--stage1-steps", "6", "--stage2-steps", "6", "--heldout", "8",
                 "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["eval"]) == {"before", "after_stage1", "after_stage2"}
    assert all(0.0 <= v <= 1.0 for v in report["eval"].values())
    assert [s["name"] for s in report["stages"]] == ["stage1_format", "stage2_distill"]
    assert all(s["steps"] == 6 and s["loss_last"] < s["loss_first"] for s in report["stages"])
    assert report["wall_seconds"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "demo"
    assert re.fullmatch(r"[0-9a-f]{40}", manifest["code"].get("git_commit", "0" * 40))
    assert {"jax", "flax", "optax", "grain"} <= set(manifest["packages"])
    assert len(manifest["data_files"]) == 3 and all(len(f["sha256"]) == 64 for f in manifest["data_files"])
    assert manifest["tokenizer"]["sha256"] and manifest["seeds"] == {"seed": 0}
    assert manifest["devices"]["device_count"] >= 1 and manifest["sampling"]["temperature"] == 0.0
    # train wrote its own manifest and the per-stage weights load back
    train_manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert train_manifest["kind"] == "train" and train_manifest["config"]["stages"][1]["name"] == "stage2_distill"
    # every training file with its hash and exact counts (records = kept + skipped)
    files = {f["stage"]: f for f in train_manifest["data_files"]}
    assert set(files) == {"stage1_format", "stage2_distill"}
    for f in files.values():
        assert len(f["sha256"]) == 64 and f["records"] == f["kept"] + f["skipped"] and f["kept"] > 0
    assert (out / "train" / "stage2_distill" / "hf" / "model.safetensors").is_file()
    assert (out / "train" / "tb").is_dir() and (out / "train" / "metrics.jsonl").stat().st_size > 0


def test_eval_cli_on_a_trained_model(tmp_path):
    """`jax-distill eval` on the tiny config's exported model: files, manifest, real sampler and grader."""
    from tests.conftest import REPO_ROOT

    held = REPO_ROOT / "configs" / "tiny_data" / "heldout.jsonl"
    run = tmp_path / "run"
    assert main(["train", "--config", str(REPO_ROOT / "configs" / "tiny_cpu.yaml"), "--no-progress",
                 "train.steps=3", f"output_dir={run}", f"checkpoint.dir={run}/ck"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(run / "ck"), "--tokenizer", str(REPO_ROOT / "configs/tiny_data/tokenizer"),
                 "--benchmark", "demo", "--data", str(held), "--limit", "6", "--n-samples", "2",
                 "--temperature", "0.8", "--max-new-tokens", "24", "--dtype", "float32", "--out", str(out)]) == 0
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and {"problem_index", "completion", "extracted_answer", "correct", "output_tokens"} <= set(samples[0])
    results = json.loads((out / "results.json").read_text())
    assert results["n_problems"] == 6 and results["n_samples"] == 2 and "maj@k" in results
    assert (out / "results.md").is_file() and json.loads((out / "manifest.json").read_text())["kind"] == "eval"

    # The stage export is a self-contained checkpoint: eval needs no --tokenizer, transformers loads model and
    # tokenizer, and the tokenizer's chat template renders the ids our training encoded.
    export = run / "stage2_distill" / "hf"
    out2 = tmp_path / "eval_export"
    assert main(["eval", "--model", str(export), "--benchmark", "demo", "--data", str(held), "--limit", "2",
                 "--n-samples", "1", "--max-new-tokens", "8", "--dtype", "float32", "--out", str(out2)]) == 0
    assert json.loads((out2 / "results.json").read_text())["n_problems"] == 2
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from jax_distill.data.tokenize import load_tokenizer

    ours = load_tokenizer(str(REPO_ROOT / "configs/tiny_data/tokenizer"))
    hf_tok = AutoTokenizer.from_pretrained(export)
    problem = json.loads(held.read_text().splitlines()[0])["problem"]
    msgs = [{"role": "user", "content": problem}]
    want, _ = ours.encode_chat(msgs, add_generation_prompt=True)
    assert list(hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)) == want
    gen = GenerationConfig.from_pretrained(export)
    assert gen.eos_token_id == [ours.eos_id, ours.pad_id] and gen.pad_token_id == ours.pad_id
    hf_model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    with torch.no_grad():
        greedy = hf_model.generate(torch.tensor([want]), max_new_tokens=4, do_sample=False)
    from jax_distill import generate, load_pretrained

    mine = generate(load_pretrained(export, dtype="float32"), [want], max_new_tokens=4, temperature=0.0,
                    stop_ids=ours.stop_ids)[0]
    theirs = greedy[0, len(want):].tolist()
    assert mine == theirs[:len(mine)] and (len(mine) == 4 or theirs[len(mine)] in ours.stop_ids)


def test_cli_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert name in text
