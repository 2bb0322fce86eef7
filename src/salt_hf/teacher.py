"""The teacher: loading, compatibility checks against the student, placement and release."""

from __future__ import annotations

import gc
import os
from typing import Any

import torch
from accelerate.logging import get_logger
from accelerate.utils import release_memory
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

logger = get_logger(__name__)


def _resolve_dtype_kwargs(init_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(init_kwargs or {})
    for key in ("dtype", "torch_dtype"):
        value = kwargs.get(key)
        if isinstance(value, str) and value != "auto":
            if not isinstance(getattr(torch, value, None), torch.dtype):
                raise ValueError(
                    f"teacher_model_init_kwargs[{key!r}]={value!r} is not a torch dtype (e.g. 'bfloat16')."
                )
            kwargs[key] = getattr(torch, value)
    return kwargs


def load_teacher(name_or_path: str, init_kwargs: dict[str, Any] | None = None) -> PreTrainedModel:
    """Loads a causal-LM teacher with `from_pretrained` (safetensors only unless the kwargs say otherwise)."""
    kwargs = {"use_safetensors": True, **_resolve_dtype_kwargs(init_kwargs)}
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def load_teacher_config(name_or_path: str, init_kwargs: dict[str, Any] | None = None) -> PretrainedConfig:
    trust = bool((init_kwargs or {}).get("trust_remote_code", False))
    return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust)


def load_teacher_tokenizer(name_or_path: str, init_kwargs: dict[str, Any] | None = None):
    """The teacher's tokenizer when its folder has one, else None (then only the vocabulary sizes are compared)."""
    trust = bool((init_kwargs or {}).get("trust_remote_code", False))
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust)
    except (OSError, ValueError, TypeError):
        return None


def output_vocab_size(model_or_config: PreTrainedModel | PretrainedConfig) -> int:
    """Rows of the output embedding (what the logits' last dimension will be)."""
    if isinstance(model_or_config, PreTrainedModel) or hasattr(model_or_config, "get_output_embeddings"):
        head = model_or_config.get_output_embeddings()
        if head is not None and getattr(head, "weight", None) is not None and head.weight.ndim == 2:
            # Under ZeRO-3 a partitioned weight is empty; its full shape is kept in ds_shape.
            shape = getattr(head.weight, "ds_shape", head.weight.shape)
            return int(shape[0])
        model_or_config = model_or_config.config
    return int(model_or_config.get_text_config().vocab_size)


def check_tokenizers_match(student_tokenizer, teacher_tokenizer) -> None:
    """KD compares distributions token by token: both models must use the very same token ids."""
    if student_tokenizer is None or teacher_tokenizer is None:
        return
    if not (hasattr(student_tokenizer, "get_vocab") and hasattr(teacher_tokenizer, "get_vocab")):
        return
    sv, tv = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if sv == tv:
        return
    only_s = len(set(sv.items()) - set(tv.items()))
    only_t = len(set(tv.items()) - set(sv.items()))
    raise ValueError(
        f"The teacher's tokenizer differs from the student's ({len(tv)} vs {len(sv)} tokens; {only_s} student and "
        f"{only_t} teacher (token, id) pairs have no match). Token-level KD needs one tokenizer: use a teacher "
        "trained with the student's tokenizer."
    )


def resolve_kd_vocab_size(student_vocab: int, teacher_vocab: int, tokenizer=None) -> int:
    """
    The vocabulary over which KD is computed. Members of one family often pad their embedding matrices to different
    sizes (151,936 vs 152,064 rows for one tokenizer): the rows beyond the tokenizer are never a label, so the
    distributions are compared over the real vocabulary, `len(tokenizer)`, or, without a tokenizer, the smaller size.
    """
    if tokenizer is not None and hasattr(tokenizer, "__len__"):
        real = len(tokenizer)
        if real > min(student_vocab, teacher_vocab):
            raise ValueError(
                f"The tokenizer has {real} tokens but the student's output embedding has {student_vocab} rows and the "
                f"teacher's {teacher_vocab}: resize the smaller model's embeddings (resize_token_embeddings) first."
            )
        return real
    if student_vocab != teacher_vocab:
        logger.warning(
            f"Student ({student_vocab}) and teacher ({teacher_vocab}) output vocabularies differ and no tokenizer was "
            f"given: distilling over the first {min(student_vocab, teacher_vocab)} tokens. Pass processing_class to "
            "use the tokenizer's real size.",
            main_process_only=True,
        )
    return min(student_vocab, teacher_vocab)


def prepare_teacher(teacher: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    """Frozen and in eval mode; moved to the process's device unless the user placed it with a device_map."""
    teacher.eval()
    teacher.requires_grad_(False)
    if getattr(teacher, "hf_device_map", None) is None:
        teacher.to(device)
    return teacher


def free_memory() -> None:
    gc.collect()
    release_memory()


def is_local_path(name_or_path: str) -> bool:
    return os.path.isdir(name_or_path)
