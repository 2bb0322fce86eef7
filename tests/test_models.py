"""salt_hf.models: named sizes and JSON configs for new students, students from a checkpoint, LoRA, positions."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures import make_llama
from transformers import GPT2Config, LlamaConfig

from salt_hf.models import MODEL_SIZES, build_student, max_positions, new_model_config


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_named_sizes_are_tied_llamas_of_the_tokenizer(tokenizer, size):
    config = new_model_config(size, len(tokenizer), 96, tokenizer)
    assert isinstance(config, LlamaConfig) and config.tie_word_embeddings
    for name, value in MODEL_SIZES[size].items():
        assert getattr(config, name) == value
    assert config.num_key_value_heads == config.num_attention_heads
    assert config.vocab_size == len(tokenizer) and max_positions(config) == 96
    assert (config.bos_token_id, config.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)


def test_json_config_fields_and_gpt2(tmp_path, tokenizer):
    llama = tmp_path / "llama.json"
    llama.write_text(json.dumps({"hidden_size": 24, "num_attention_heads": 2, "max_position_embeddings": 40}))
    config = new_model_config(str(llama), 300, 32, tokenizer)
    assert isinstance(config, LlamaConfig) and config.hidden_size == 24 and max_positions(config) == 40
    assert config.vocab_size == 300  # the vocabulary the caller gives, unless the file names one
    gpt2 = tmp_path / "gpt2.json"
    gpt2.write_text(json.dumps({"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2}))
    config = new_model_config(str(gpt2), 300, 32, tokenizer)
    assert isinstance(config, GPT2Config) and max_positions(config) == 32


def test_unknown_model_config_names_the_flag(tokenizer):
    with pytest.raises(ValueError, match="--model_config 'huge' is neither a named size"):
        new_model_config("huge", 300, 32, tokenizer)


def test_build_a_new_student(tokenizer):
    torch.manual_seed(0)
    student = build_student(tokenizer, name_or_path=None, model_config="1m", seq_length=48)
    assert student.config.hidden_size == MODEL_SIZES["1m"]["hidden_size"] and max_positions(student.config) == 48
    assert student.get_output_embeddings().weight.shape[0] == len(tokenizer)


def test_build_a_student_from_a_checkpoint_and_with_lora(tmp_path, tokenizer):
    saved = make_llama(len(tokenizer), 32, 2, seed=3)
    saved.save_pretrained(tmp_path / "ckpt")
    # model_config and seq_length are ignored for a checkpoint
    student = build_student(tokenizer, name_or_path=str(tmp_path / "ckpt"), model_config="1m", seq_length=8)
    for a, b in zip(student.parameters(), saved.parameters(), strict=True):
        assert torch.equal(a, b)
    lora = build_student(
        tokenizer,
        name_or_path=str(tmp_path / "ckpt"),
        model_config="1m",
        seq_length=8,
        lora=dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=None),
    )
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)  # all-linear leaves the output head alone
    assert any("mlp" in n for n in trainable) and any("self_attn" in n for n in trainable)


def test_a_folder_without_a_model_raises(tmp_path, tokenizer):
    with pytest.raises((OSError, ValueError)):  # what from_pretrained raises; the CLI turns both into an input error
        build_student(tokenizer, name_or_path=str(tmp_path), model_config="1m", seq_length=8)


def test_max_positions_when_the_config_does_not_say():
    config = LlamaConfig(max_position_embeddings=0)
    assert max_positions(config) is None
