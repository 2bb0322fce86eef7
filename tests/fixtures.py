"""
Plain helpers the test modules share (the pytest fixtures are in conftest.py): tiny Llamas, rows of real tokens, the
arguments of short runs. The distributed tests' worker scripts import it too (their launch puts tests/ on PYTHONPATH).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from salt_hf import SALTConfig

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SEQ = 24  # tokens per training row
# The fields of a JSON model config (`--model_config`) for a tiny Llama student.
TINY_LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
# Every short test run: silent, seeded, no checkpoints, every step logged.
RUN = dict(
    report_to="none",
    save_strategy="no",
    logging_steps=1,
    seed=0,
    data_seed=0,
    disable_tqdm=True,
    dataloader_num_workers=0,
)
# The run the resume tests interrupt: 6 steps of 2 x 2 sequences, the KD stage ending at step 3.
RESUME_RUN = dict(
    max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=2, kd_steps=3, learning_rate=3e-3
)


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
    """A short CPU run (`RUN`) writing under `tmp_path`; `kw` adds or overrides fields."""
    return SALTConfig(**{"output_dir": str(tmp_path / "out"), "use_cpu": True, **RUN, **kw})


def one_sgd_step_config(output_dir: str, batch: int, accum: int, **kw) -> SALTConfig:
    """
    One optimizer step of plain SGD at lr 0.5 (no momentum, constant rate, no clipping: the step is lr times the
    gradient, so two computations of it differ by lr times their gradients' difference), KD on that step.
    """
    values = dict(
        output_dir=output_dir,
        max_steps=1,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        kd_steps=1,
    )
    return SALTConfig(**{**RUN, **values, **kw})


def save_teacher(teacher: torch.nn.Module, tokenizer, path: Path) -> str:
    """The teacher and its tokenizer in one save_pretrained folder, for runs that load the teacher from a path."""
    teacher.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_salt_trainer(tokenizer, teacher, args, train_dataset, **kwargs):
    """SALTTrainer of a fresh 2-layer, 32-wide student (seed 0) with `teacher` (a model or its folder)."""
    from salt_hf import SALTTrainer

    student = make_llama(len(tokenizer), 32, 2, seed=0)
    return SALTTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        **kwargs,
    )
