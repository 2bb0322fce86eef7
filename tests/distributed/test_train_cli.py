"""
`train.py` (the CLI) under ZeRO-3 with two real processes: a SALT run across the end of the KD stage that saves sharded
checkpoints, resumes from one and ends where the uninterrupted run ended; the exported student loads without DeepSpeed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from common import ROOT, check, torchrun
from fixtures import TINY_LLAMA, save_teacher
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.distributed
pytest.importorskip("deepspeed")

MAX_STEPS, KD_STEPS, SAVE_STEPS = 6, 3, 2
# train.py itself, under a wrapper that gives Accelerate the gloo backend for DeepSpeed on a machine without GPUs
CPU_DEEPSPEED = Path(__file__).with_name("cpu_deepspeed.py")


def run_train_py(args: list[str]):
    return torchrun(CPU_DEEPSPEED, [str(ROOT / "train.py"), *args])


def cli_args(tmp_path: Path, teacher_dir: str, **extra) -> list[str]:
    args = {
        "deepspeed": str(ROOT / "deepspeed_configs" / "zero3.json"),
        "output_dir": str(tmp_path / "out"),
        "model_config": str(tmp_path / "tiny.json"),
        "tokenizer_name_or_path": teacher_dir,
        "teacher_model_name_or_path": teacher_dir,
        "max_corpus_bytes": 300_000,
        "seq_length": 32,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "learning_rate": 3e-3,
        "warmup_steps": 2,
        "max_steps": MAX_STEPS,
        "kd_steps": KD_STEPS,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": SAVE_STEPS,
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": "true",
        "seed": 0,
    }
    args.update(extra)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


@pytest.fixture
def teacher_dir(tmp_path, tokenizer, teacher) -> str:
    """conftest's tiny teacher saved with save_pretrained beside the tokenizer the student will use."""
    path = save_teacher(teacher, tokenizer, tmp_path / "teacher")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_LLAMA))
    # Prepare the corpus once here, as the CLI will: both ranks then read it from the datasets cache.
    from salt_hf.data import builtin_corpus, tokenize_and_pack

    tokenize_and_pack(builtin_corpus(validation_fraction=0.05, max_bytes=300_000), tokenizer, seq_length=32)
    return path


def kd_weights(state_file: Path) -> list[float]:
    history = json.loads(state_file.read_text())["log_history"]
    return [h["kd_weight"] for h in history if "kd_weight" in h]


def test_zero3_run_across_kd_end_saves_resumes_and_exports(tmp_path, teacher_dir):
    out = tmp_path / "out"
    proc, seconds = run_train_py(cli_args(tmp_path, teacher_dir))
    check(proc)
    print(f"uninterrupted ZeRO-3 CLI run: {seconds:.1f} s")
    assert kd_weights(out / "trainer_state.json") == [0.5] * KD_STEPS + [0.0] * (MAX_STEPS - KD_STEPS)
    # sharded ZeRO-3 checkpoints: one model-state and one optimizer-state file per rank, no full copy in them
    ckpt = out / f"checkpoint-{SAVE_STEPS}"
    shards = {p.name for p in (ckpt / f"global_step{SAVE_STEPS}").iterdir()}
    for rank in (0, 1):
        for kind in ("model", "optim"):
            assert any(name.endswith(f"zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt") for name in shards), shards
    final = load_file(str(out / "model.safetensors"))

    # the exported student: one save_pretrained folder, loadable without DeepSpeed, with the trained weights
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 2
    ids = torch.arange(10).unsqueeze(0)
    assert torch.isfinite(student(input_ids=ids).logits).all()
    assert set(final) == set(student.state_dict())  # the teacher is not in it

    # resume inside the KD stage (step 2 < n_KD = 3) from the ZeRO-3 checkpoint: the teacher is loaded again, KD ends
    # at step 3 and the run ends with the uninterrupted run's weights
    (out / "model.safetensors").rename(out / "uninterrupted.safetensors")
    proc, seconds = run_train_py(cli_args(tmp_path, teacher_dir, resume_from_checkpoint=str(ckpt)))
    check(proc)
    print(f"resumed ZeRO-3 CLI run: {seconds:.1f} s")
    assert kd_weights(out / "trainer_state.json") == [0.5] * KD_STEPS + [0.0] * (MAX_STEPS - KD_STEPS)
    resumed = load_file(str(out / "model.safetensors"))
    diff = max((resumed[k] - final[k]).abs().max().item() for k in final)
    print(f"resumed vs uninterrupted: max |diff| = {diff:.3g}")
    assert diff <= 1e-5


@pytest.mark.slow
def test_zero3_offload_with_a_sharded_teacher(tmp_path, teacher_dir):
    """zero3_offload.json (weights and optimizer states in CPU memory, DeepSpeed's CPU AdamW) with the teacher sharded
    by ZeRO-3 inference (and offloaded like the student)."""
    out = tmp_path / "out"
    args = cli_args(
        tmp_path,
        teacher_dir,
        deepspeed=str(ROOT / "deepspeed_configs" / "zero3_offload.json"),
        teacher_placement="zero3",
        max_steps=4,
        kd_steps=2,
        save_strategy="no",
    )
    proc, seconds = run_train_py(args)
    check(proc)
    print(f"ZeRO-3 offload CLI run with a sharded teacher: {seconds:.1f} s")
    assert kd_weights(out / "trainer_state.json") == [0.5, 0.5, 0.0, 0.0]
    student = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(student(input_ids=torch.arange(10).unsqueeze(0)).logits).all()
