"""Tokenizers written with a model export: transformers reads them back with the same ids and chat format."""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_DATA

QWEN_TIKTOKEN = SHARED_DATA / "tokenizer" / "qwen.tiktoken"
TEXTS = ["Hello world", "Compute 12345 + 678 = ?\n\nStep 1:  carry the 1.", "Ünïcödé √2 ≈ 1.414, $\\boxed{73}$",
         "<|im_end|> is text here, not a control token"]


@pytest.mark.skipif(not QWEN_TIKTOKEN.is_file(), reason=f"{QWEN_TIKTOKEN} absent (the real Qwen2.5 vocabulary)")
def test_tiktoken_vocabulary_saves_as_a_transformers_tokenizer_with_the_same_ids(tmp_path):
    from transformers import AutoTokenizer

    from jax_distill.data.tokenize import QWEN_SPECIAL_IDS, load_tokenizer

    ours = load_tokenizer(str(QWEN_TIKTOKEN))
    ours.save(tmp_path / "tok")
    hf = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for text in TEXTS:
        assert hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == ours.encode(text), text
    assert {t: hf.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_IDS} == QWEN_SPECIAL_IDS
    msgs = [{"role": "user", "content": TEXTS[1]}, {"role": "assistant", "content": TEXTS[2]}]
    ids, _ = ours.encode_chat(msgs)
    assert list(hf.apply_chat_template(msgs, tokenize=True, return_dict=False)) == ids
    assert hf.apply_chat_template(msgs, tokenize=False).startswith("<|im_start|>system\nYou are Qwen")
    # Round trip through our own loader: the saved directory is a tokenizer spec like any other.
    again = load_tokenizer(str(tmp_path / "tok"))
    assert (again.eos_id, again.pad_id, again.im_start_id) == (ours.eos_id, ours.pad_id, ours.im_start_id)
    assert again.encode_chat(msgs) == ours.encode_chat(msgs)


def test_custom_system_turn_survives_export(tmp_path):
    from transformers import AutoTokenizer

    from jax_distill.data.tokenize import load_tokenizer
    from tests.conftest import REPO_ROOT

    ours = load_tokenizer(str(REPO_ROOT / "configs" / "tiny_data" / "tokenizer"))
    ours.save(tmp_path / "tok")
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    hf = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (f"<|im_start|>system\n{ours.default_system}<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert load_tokenizer(str(tmp_path / "tok")).default_system == ours.default_system
