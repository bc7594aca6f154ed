"""`jax-distill eval` on a decode mesh (data=2, tensor=2) and under two processes writes what one device writes."""

import json

import pytest
from jax.sharding import PartitionSpec as P

from jax_distill.cli import main
from jax_distill.sharding import DECODE_RULES, MeshConfig, make_mesh, parse_mesh_spec
from tests.conftest import REPO_ROOT, run_two_processes

DATA = REPO_ROOT / "configs" / "tiny_data"
# Sampled (temperature and top-p): every token is a draw from the logits, so a different sharding that changed them
# would show; 3 problems x 2 samples on 4 slots: refills, and pass@2 / maj@2 over repeated samples.
EVAL_ARGS = ["--tokenizer", str(DATA / "tokenizer"), "--benchmark", "demo", "--data", str(DATA / "heldout.jsonl"),
             "--limit", "3", "--n-samples", "2", "--temperature", "0.8", "--top-p", "0.95", "--max-new-tokens", "12",
             "--batch-size", "4", "--dtype", "float32", "--seed", "3"]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A random tiny Qwen2 (4 heads, 2 kv heads, vocab 512 = the tiny tokenizer's) as a Hugging Face directory."""
    from jax_distill.model.config import ModelConfig
    from jax_distill.model.hf_io import save_pretrained
    from jax_distill.model.qwen2 import init_model

    path = tmp_path_factory.mktemp("tiny_hf") / "model"
    # init_std 0.5: peaked logits, so the samples depend on the weights rather than on near-ties.
    save_pretrained(init_model(ModelConfig(preset="tiny", init_std=0.5).resolve(), seed=1), path)
    return path


@pytest.fixture(scope="module")
def one_device(tiny_hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_device")
    assert main(["eval", "--model", str(tiny_hf), *EVAL_ARGS, "--out", str(out)]) == 0
    return out


def _same_results(a, b):
    for name in ("samples.jsonl", "results.json", "results.md"):
        assert (a / name).read_text() == (b / name).read_text(), name


def test_eval_on_a_data_tensor_mesh_equals_one_device(tiny_hf, one_device, tmp_path):
    out = tmp_path / "mesh"
    assert main(["eval", "--model", str(tiny_hf), *EVAL_ARGS, "--mesh", "data=2,tensor=2", "--out", str(out)]) == 0
    _same_results(one_device, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: manifest["mesh"][k] for k in ("data", "fsdp", "tensor")} == {"data": 2, "fsdp": 1, "tensor": 2}
    assert manifest["mesh"]["rules"]["embed"] is None and manifest["mesh"]["rules"]["heads"] == "tensor"


@pytest.mark.slow  # two fresh JAX processes compiling the engine: ~50 s on 2 shared cores
def test_eval_under_two_processes_equals_one_device(tiny_hf, one_device, tmp_path):
    out = tmp_path / "two"
    run_two_processes("tests.eval.two_process_eval", [str(out), "--", "--model", str(tiny_hf), *EVAL_ARGS], 300,
                      "two-process eval")
    _same_results(one_device, out)
    assert json.loads((out / "manifest.json").read_text())["devices"]["process_count"] == 2


def test_engine_places_weights_and_cache_by_the_decode_rules():
    """Heads and MLP over tensor, weights whole over data (no FSDP), cache rows over data and kv heads over tensor."""
    from jax_distill.model.config import ModelConfig
    from jax_distill.model.qwen2 import init_model
    from jax_distill.sample.engine import Engine, _empty_cache

    mesh = make_mesh(parse_mesh_spec("data=2,tensor=2", decode=True), __import__("jax").devices()[:4])
    engine = Engine(init_model(ModelConfig(preset="tiny").resolve()), slots=4, mesh=mesh, rules=DECODE_RULES)

    def spec(x):  # PartitionSpec without trailing Nones
        s = tuple(x.sharding.spec)
        while s and s[-1] is None:
            s = s[:-1]
        return P(*s)

    layers = engine.params["layers"]
    assert spec(layers["q_proj"][...]) == P(None, None, "tensor")
    assert spec(layers["down_proj"][...]) == P(None, "tensor")
    assert spec(engine.params["embed"][...]) == P("tensor")
    assert spec(engine.layer_weights[0]["gate_proj"]) == P(None, "tensor")
    cache = _empty_cache(engine.model.config, 4, 64, engine.cache_dtype, engine.layout)
    assert spec(cache.k[0]) == P("data", "tensor")
    assert spec(cache.segment_ids) == P("data") and spec(cache.index) == P()
    with pytest.raises(ValueError, match="divide by the mesh's data axis"):
        Engine(engine.model, slots=3, mesh=mesh, rules=DECODE_RULES)


def test_decode_mesh_spec_and_rules():
    cfg = parse_mesh_spec("tensor=2", ["kv_heads=null", "mlp=data+tensor"], decode=True)
    assert (cfg.data, cfg.fsdp, cfg.tensor) == (-1, 1, 2)
    rules = dict(cfg.axis_rules(DECODE_RULES))
    assert rules["embed"] is None and rules["batch"] == "data" and rules["heads"] == "tensor"
    assert rules["kv_heads"] is None and rules["mlp"] == ("data", "tensor")
    assert make_mesh(cfg, __import__("jax").devices()).shape == {"data": 4, "fsdp": 1, "tensor": 2}
    for bad, match in (("data=2,fsdp=2", "no fsdp axis"), ("pipeline=2", "not AXIS=SIZE"), ("data=x", "integer")):
        with pytest.raises(ValueError, match=match):
            parse_mesh_spec(bad, decode=True)
    with pytest.raises(ValueError, match="unknown logical axis"):
        parse_mesh_spec("data=2", ["experts=tensor"], decode=True)
    assert MeshConfig().axis_rules() != MeshConfig().axis_rules(DECODE_RULES)


def test_eval_refuses_a_bad_mesh(tiny_hf, tmp_path, capsys):
    for mesh, message in (("data=3", "--batch-size 4 must divide by the mesh's data axis (3)"),
                          ("data=4,tensor=4", "needs 16 devices, have 8"), ("fsdp=2", "no fsdp axis")):
        assert main(["eval", "--model", str(tiny_hf), *EVAL_ARGS, "--mesh", mesh, "--out", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.skipif(not __import__("jax_distill.plan.topology", fromlist=["x"]).libtpu_available(),
                    reason="libtpu not installed (pip install 'jax-distill[tpu]')")
def test_plan_eval_on_a_tpu_decode_mesh(capsys):
    """`plan --eval` compiles the engine's decode chunk and prefill on a (data, tensor) decode mesh of a v5p-8: the
    compiled arguments are the weights and the KV cache at the per-chip sizes the decode rules give."""
    import json

    assert main(["plan", "--model", "tiny", "--topology", "v5p-8", "--eval", "--decode-slots", "8",
                 "--decode-len", "1024", "--decode-prompt-len", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2} and out["fits"] is True
    # tiny: 2 layers, 2 kv heads of 16: k and v of 8 rows x 1024 slots in bf16, rows over data, kv heads over tensor
    assert out["cache_bytes_per_chip"] == 2 * 2 * 8 * 2 * 1024 * 16 * 2 // (2 * 2)
    d = out["decode"]
    resident = out["weights_bytes_per_chip"] - out["held_outside_bytes"] + out["cache_bytes_per_chip"]
    segments = 8 * 1024 * 4 // 2  # the cache's int32 segment ids, rows over data
    # (plus TPU layout padding: the tiny model's small arrays are padded to (8, 128) tiles)
    assert resident <= d["argument_bytes"] <= 1.15 * (resident + segments)
    assert d["per_chip_bytes"] >= d["argument_bytes"] + out["held_outside_bytes"]
    assert out["prefill"]["fits"] is True and out["prefill"]["per_chip_bytes"] < out["capacity_bytes"]


def test_plan_eval_on_gpus(capsys):
    """The same eval plan for one node of 8 H100s: the decode mesh given, the budget what JAX may allocate."""
    import json

    from tests.plan.test_plan_gpu import needs_gpu_compiler

    if needs_gpu_compiler.args[0]:
        pytest.skip(needs_gpu_compiler.kwargs["reason"])
    from jax_distill.plan.gpu import load_gpu_spec, parse_gpu_topology, usable_bytes

    assert main(["plan", "--model", "tiny", "--topology", "8xh100", "--eval", "--decode-mesh", "data=4,tensor=2",
                 "--decode-slots", "8", "--decode-len", "512", "--decode-prompt-len", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mesh"] == {"data": 4, "fsdp": 1, "tensor": 2} and out["fits"] is True
    assert out["capacity_bytes"] == usable_bytes(load_gpu_spec(parse_gpu_topology("8xh100").kind))
    assert out["cache_bytes_per_chip"] == 2 * 2 * 8 * 2 * 512 * 16 * 2 // (4 * 2)
    resident = out["weights_bytes_per_chip"] - out["held_outside_bytes"] + out["cache_bytes_per_chip"]
    assert resident <= out["decode"]["argument_bytes"] <= 1.15 * (resident + 8 * 512 * 4 // 4)
