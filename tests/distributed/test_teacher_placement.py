"""In-process checks of teacher placement: the ZeRO-3 inference config, loading outside zero.Init, the config field."""

from __future__ import annotations

import os

import pytest
from common import teacher_model
from transformers import HfArgumentParser
from transformers.integrations import deepspeed_config, is_deepspeed_zero3_enabled

from salt_hf import SALTConfig
from salt_hf.config import TEACHER_PLACEMENTS
from salt_hf.teacher import is_zero3_partitioned, load_teacher, zero3_inference_config


def test_zero3_inference_config_follows_the_students_deepspeed_config():
    config = teacher_model().config  # hidden size 16
    offload = {"device": "cpu", "pin_memory": True}
    student_ds = {
        "bf16": {"enabled": True},
        "fp16": {"enabled": False},
        "zero_optimization": {"stage": 3, "offload_param": offload},
    }
    ds = zero3_inference_config(config, micro_batch_size=2, trainer_ds_config=student_ds)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 160
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["train_micro_batch_size_per_gpu"] == 2 and "optimizer" not in ds and "scheduler" not in ds
    # without a DeepSpeed student (DDP): precision from the training arguments, no offload
    ds = zero3_inference_config(config, micro_batch_size=4, fp16=True)
    assert ds["fp16"] == {"enabled": True} and ds["bf16"] == {"enabled": False}
    assert "offload_param" not in ds["zero_optimization"]


def test_replicated_teacher_loads_whole_under_a_zero3_student_config(tmp_path, monkeypatch):
    """An active ZeRO-3 HfDeepSpeedConfig makes from_pretrained partition weights; a replicated teacher escapes it."""
    pytest.importorskip("deepspeed")
    from transformers.integrations import HfDeepSpeedConfig

    teacher_model().save_pretrained(tmp_path)
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    student_ds = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    assert is_deepspeed_zero3_enabled()
    teacher = load_teacher(str(tmp_path))
    assert not is_zero3_partitioned(teacher)
    assert all(p.numel() > 0 for p in teacher.parameters())
    # the student's configuration is exactly as it was
    assert is_deepspeed_zero3_enabled() and deepspeed_config() is student_ds.config
    assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    del student_ds


def test_teacher_placement_field(tmp_path):
    assert SALTConfig(output_dir=str(tmp_path), report_to="none").teacher_placement == "replicate"
    actions = {a.dest: a for a in HfArgumentParser(SALTConfig)._actions}
    assert sorted(actions["teacher_placement"].choices) == sorted(TEACHER_PLACEMENTS)
    with pytest.raises(ValueError, match="teacher_placement='shard'"):
        SALTConfig(output_dir=str(tmp_path), report_to="none", teacher_placement="shard")
    with pytest.raises(ValueError, match="FSDP"):
        SALTConfig(output_dir=str(tmp_path), report_to="none", teacher_placement="zero3", fsdp=True, use_cpu=True)
