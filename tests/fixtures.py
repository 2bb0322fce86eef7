"""Plain helpers the test modules share (the pytest fixtures are in conftest.py): tiny Llamas, rows of real tokens,
the arguments of a short CPU run."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from salt_hf import SALTConfig

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SEQ = 24  # tokens per training row


def make_llama(vocab: int, hidden: int, layers: int, seed: int, max_pos: int = 128, head_scale: float = 1.0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_pos,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def rows(token_stream: torch.Tensor, n: int, seq: int = SEQ, offset: int = 0) -> torch.Tensor:
    return token_stream[offset : offset + n * seq].view(n, seq)


def dataset(token_stream: torch.Tensor, n: int, supervised=None, seq: int = SEQ, offset: int = 0) -> Dataset:
    """Rows of real tokens; `supervised[i]` keeps only the first k labels of row i (unequal lengths)."""
    ids = rows(token_stream, n, seq, offset)
    labels = ids.clone()
    for i, k in enumerate(supervised or []):
        labels[i, k:] = -100
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def config(tmp_path: Path, **kw) -> SALTConfig:
    """A short, silent, seeded CPU run writing under `tmp_path`; `kw` adds or overrides fields."""
    base = dict(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return SALTConfig(**{**base, **kw})


def save_teacher(teacher: torch.nn.Module, tokenizer, path: Path) -> str:
    """The teacher and its tokenizer in one save_pretrained folder, for runs that load the teacher from a path."""
    teacher.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
