"""New students and teachers from a named size or a JSON config, students from a checkpoint (optionally with LoRA
adapters), and the facts the CLI checks about a model."""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PretrainedConfig, PreTrainedModel

# Named Llama sizes for pretraining from scratch (parameters counted at vocabulary 8k, embeddings tied).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "1m": dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
    "2m": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=3, num_attention_heads=2),
    "3m": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=3, num_attention_heads=3),
    "5m": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4),
    "20m": dict(hidden_size=448, intermediate_size=1216, num_hidden_layers=8, num_attention_heads=7),
}


def new_model_config(spec: str, vocab_size: int, seq_length: int, tokenizer) -> PretrainedConfig:
    """
    The config of a new model: `spec` is a key of `MODEL_SIZES` (a Llama with tied embeddings) or the path of a JSON
    file of config fields (`"model_type": "gpt2"` for GPT-2; Llama otherwise). Raises `ValueError` for anything else.
    """
    check_model_config_spec(spec)
    if spec in MODEL_SIZES:
        fields = dict(MODEL_SIZES[spec], num_key_value_heads=MODEL_SIZES[spec]["num_attention_heads"])
        fields["tie_word_embeddings"] = True
        model_type = "llama"
    else:
        with open(spec) as f:
            fields = json.load(f)
        model_type = fields.pop("model_type", "llama")
    fields.setdefault("vocab_size", vocab_size)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if model_type == "llama":
        fields.setdefault("max_position_embeddings", seq_length)
        return LlamaConfig(**special, pad_token_id=tokenizer.pad_token_id, **fields)
    fields.setdefault("n_positions", seq_length)
    return AutoConfig.for_model(model_type, **special, **fields)


def check_model_config_spec(spec: str) -> None:
    """Raises `ValueError` unless `spec` is a key of `MODEL_SIZES` or an existing file (`new_model_config`)."""
    if spec not in MODEL_SIZES and not os.path.isfile(spec):
        raise ValueError(
            f"--model_config {spec!r} is neither a named size ({', '.join(MODEL_SIZES)}) nor a JSON file of config "
            "fields."
        )


def max_positions(config: PretrainedConfig) -> int | None:
    """The longest sequence the model's position embeddings cover, or None when the config does not say."""
    text = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(text, name, None):
            return int(getattr(text, name))
    return None


def build_student(
    tokenizer,
    *,
    name_or_path: str | None,
    model_config: str,
    seq_length: int,
    trust_remote_code: bool = False,
    lora: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """
    The student to train: the checkpoint `name_or_path` (safetensors only), or, when it is None, a new model of
    `new_model_config(model_config, len(tokenizer), seq_length, tokenizer)`.

    Args:
        lora (`dict`, *optional*):
            Fields of a `peft.LoraConfig` (`r`, `lora_alpha`, `lora_dropout`, `target_modules`, ...): train LoRA
            adapters on the student instead of all its weights. `target_modules` defaults to every linear layer but
            the output head.

    Raises `ValueError` for an unknown `model_config`, `OSError` or `ValueError` for a checkpoint that does not load.
    """
    if name_or_path:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    else:
        config = new_model_config(model_config, len(tokenizer), seq_length, tokenizer)
        model = AutoModelForCausalLM.from_config(config)
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        fields = {"task_type": "CAUSAL_LM", **lora}
        fields["target_modules"] = fields.get("target_modules") or "all-linear"
        model = get_peft_model(model, LoraConfig(**fields))
    return model
