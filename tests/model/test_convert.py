"""`jax-distill convert` both ways through a real Orbax checkpoint on disk."""

import jax
import numpy as np
from flax import nnx

from jax_distill.cli import main
from jax_distill.model.hf_io import load_pretrained
from jax_distill.model.orbax_io import load_orbax
from jax_distill.sharding import MeshConfig, make_mesh
from tests.model.hf_reference import hf_logits, make_hf_model


def test_convert_hf_to_orbax_and_back(tmp_path):
    from transformers import AutoModelForCausalLM

    hf = make_hf_model(tmp_path / "hf", tied=False)
    assert main(["convert", "--from", str(tmp_path / "hf"), "--to", str(tmp_path / "orbax")]) == 0
    assert (tmp_path / "orbax" / "params").is_dir() and (tmp_path / "orbax" / "config.json").is_file()
    restored = load_orbax(tmp_path / "orbax", mesh=make_mesh(MeshConfig(2, 2, 2)))
    assert len(restored.layers.q_proj[...].sharding.device_set) == 8
    original = load_pretrained(tmp_path / "hf")
    for a, b in zip(jax.tree.leaves(nnx.state(original)), jax.tree.leaves(nnx.state(restored))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert main(["convert", "--from", str(tmp_path / "orbax"), "--to", str(tmp_path / "hf2")]) == 0
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "hf2")
    ids = np.arange(20).reshape(2, 10)
    np.testing.assert_array_equal(hf_logits(back, ids), hf_logits(hf, ids))


def test_convert_writes_the_tokenizer_and_refuses_one_too_large(tmp_path, capsys):
    from transformers import AutoTokenizer, GenerationConfig

    from jax_distill.data.tokenize import load_tokenizer
    from tests.conftest import REPO_ROOT

    tok_dir = REPO_ROOT / "configs" / "tiny_data" / "tokenizer"
    tok = load_tokenizer(str(tok_dir))
    make_hf_model(tmp_path / "hf", tied=False, vocab=tok.vocab_size)
    assert main(["convert", "--from", str(tmp_path / "hf"), "--to", str(tmp_path / "orbax")]) == 0
    assert main(["convert", "--from", str(tmp_path / "orbax"), "--to", str(tmp_path / "out"),
                 "--tokenizer", str(tok_dir)]) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "out")("1 + 2")["input_ids"] == tok.encode("1 + 2")
    assert GenerationConfig.from_pretrained(tmp_path / "out").eos_token_id == tok.stop_ids
    make_hf_model(tmp_path / "small", tied=False, vocab=64)
    capsys.readouterr()
    assert main(["convert", "--from", str(tmp_path / "out"), "--to", str(tmp_path / "o2"),
                 "--tokenizer", str(tok_dir)]) == 2  # HF -> Orbax: weights only
    assert "goes with a Hugging Face output" in capsys.readouterr().err
    assert main(["convert", "--from", str(tmp_path / "small"), "--to", str(tmp_path / "small_orbax")]) == 0
    capsys.readouterr()
    assert main(["convert", "--from", str(tmp_path / "small_orbax"), "--to", str(tmp_path / "bad"),
                 "--tokenizer", str(tok_dir), "--dtype", "float32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than the model's 64 embedding rows" in err[0] and str(tok_dir) in err[0]
