"""A small byte-level BPE tokenizer for the demo, with Qwen's chat special tokens, trained in a second."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DEMO_SYSTEM = "Solve the problem step by step. Put the final answer in \\boxed{}."


def train_demo_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512) -> Path:
    """Train byte-level BPE (digits split one by one, as Qwen does) and save a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    # The demo's own system turn (read by jax_distill.data.tokenize in place of Qwen's default).
    (out / "jax_distill_tokenizer.json").write_text(json.dumps({"default_system": DEMO_SYSTEM}))
    return out
