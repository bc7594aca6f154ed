"""`jax-distill convert`: Hugging Face safetensors <-> Orbax, in either direction."""

from __future__ import annotations

import argparse

HELP = "convert a model between Hugging Face safetensors and an Orbax checkpoint (either direction)"
DESCRIPTION = """Convert model weights. The direction follows the source: a Hugging Face directory (config.json +
safetensors) becomes an Orbax params checkpoint; an Orbax params checkpoint, or a training checkpoint directory
(latest step), becomes a Hugging Face directory that transformers and vLLM load."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="src", required=True, help="source: HF dir, Orbax params dir, or training checkpoint dir")
    p.add_argument("--to", dest="dst", required=True, help="destination directory")
    p.add_argument("--dtype", default=None, help="storage dtype of the output (float32, bfloat16); default: the source's")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer (.tiktoken, dir or hub name) written with a Hugging Face output, with a "
                        "generation_config.json (default: none; training's stage exports carry theirs)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from jax_distill.data.tokenize import load_tokenizer
    from jax_distill.errors import UserError
    from jax_distill.model.hf_io import save_pretrained
    from jax_distill.model.orbax_io import save_orbax
    from jax_distill.train.checkpoint import load_any, source_kind

    kind = source_kind(args.src)
    if args.tokenizer and kind == "hf":
        raise UserError("--tokenizer goes with a Hugging Face output (an Orbax checkpoint holds weights only)")
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None  # a bad --tokenizer fails before the weights load
    dtype = args.dtype
    if dtype is None and kind in ("hf", "orbax"):
        dtype = json.loads((Path(args.src) / "config.json").read_text()).get("torch_dtype") or "float32"
    model = load_any(args.src, dtype or "float32")
    if tok is not None and tok.vocab_size > model.config.vocab_size:
        raise UserError(f"--tokenizer {tok.spec}: {tok.vocab_size} tokens, more than the model's "
                        f"{model.config.vocab_size} embedding rows (is it the tokenizer this model was trained with?)")
    if kind == "hf":
        out = save_orbax(model, args.dst)
        print(f"wrote Orbax params checkpoint {out}")
    else:
        out = save_pretrained(model, args.dst, dtype=dtype, tokenizer=tok)
        print(f"wrote Hugging Face model {out}")
    return 0
