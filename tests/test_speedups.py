"""salt_hf.speedups with SALTTrainer: sequence-length warmup, layer-wise learning rates, the Trainer's LR schedules and
optimizers, each with SALT."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from fixtures import RESUME_RUN, SEQ, config, dataset, flat_params, make_llama, one_sgd_step_config
from transformers import GPT2Config, GPT2LMHeadModel, HfArgumentParser

from salt_hf import SALTConfig, SALTTrainer
from salt_hf.cli import train as train_cli
from salt_hf.speedups import (
    check_seq_warmup,
    layer_depths,
    layerwise_param_groups,
    reshape_for_length,
    seq_length_at,
)

TOP = 3  # the tests' Llama: embeddings 0, layers 1 and 2, final norm and head 3


def train_logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


def expected_depth(name: str) -> int:
    """Written out for the tests' Llama, independently of speedups.layer_depths."""
    if "embed_tokens" in name:
        return 0
    match = re.search(r"\.layers\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else TOP


def multiplier(name: str, decay: float, direction: str) -> float:
    depth = expected_depth(name)
    return decay ** (TOP - depth if direction == "top_down" else depth)


# ---- 1. the sequence-length schedule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "start", "warmup", "expected"),
    [
        # linear: the longest divisor of 24 under start + (24 - start) * step / warmup
        ("linear", 6, 6, [6, 8, 12, 12, 12, 12, 24, 24]),
        ("linear", 3, 4, [3, 8, 12, 12, 24]),
        # doubling: log2(24 / start) equal stages
        ("doubling", 6, 4, [6, 6, 12, 12, 24, 24]),
        ("doubling", 3, 6, [3, 3, 6, 6, 12, 12, 24]),
    ],
)
def test_seq_length_pinned(schedule, start, warmup, expected):
    got = [
        seq_length_at(s, schedule=schedule, warmup_steps=warmup, start_length=start, full_length=SEQ)
        for s in range(len(expected))
    ]
    assert got == expected


@pytest.mark.parametrize("schedule", ["linear", "doubling"])
@pytest.mark.parametrize(("full", "start", "warmup"), [(24, 3, 7), (128, 8, 10), (2048, 64, 1000), (512, 512, 5)])
def test_seq_length_boundaries(schedule, full, start, warmup):
    lengths = [
        seq_length_at(s, schedule=schedule, warmup_steps=warmup, start_length=start, full_length=full)
        for s in range(warmup + 3)
    ]
    assert lengths[0] == start  # step 0: the start length
    assert lengths[warmup:] == [full] * 3  # from warmup_steps on: the full length
    if start < full:
        assert lengths[warmup - 1] < full  # still warming up one step before
    assert all(full % length == 0 for length in lengths)  # a block always splits into whole rows
    assert lengths == sorted(lengths)  # never shrinks
    # off: the full length from step 0
    assert seq_length_at(0, schedule=schedule, warmup_steps=0, start_length=start, full_length=full) == full


def test_seq_warmup_lengths_that_cannot_split_are_refused():
    with pytest.raises(ValueError, match="seq_warmup_start_length=5 must divide .* 24"):
        check_seq_warmup(24, schedule="linear", start_length=5)
    with pytest.raises(ValueError, match="seq_warmup_start_length=48"):
        check_seq_warmup(24, schedule="linear", start_length=48)
    with pytest.raises(ValueError, match="power of two.*24 / 4 = 6"):
        check_seq_warmup(24, schedule="doubling", start_length=4)
    with pytest.raises(ValueError, match="seq_warmup_schedule='cubic'"):
        seq_length_at(0, schedule="cubic", warmup_steps=3, start_length=6, full_length=24)
    check_seq_warmup(24, schedule="linear", start_length=4)  # linear needs only a divisor


# ---- 2. splitting a batch: shapes, every token and every target kept ------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 3, 6, 8, 12])
def test_reshape_keeps_every_token_and_every_target(token_stream, length):
    ids = token_stream[: 4 * SEQ].view(4, SEQ)
    labels = ids.clone()
    labels[1, 5:] = -100  # unequal supervision, masks that start and end inside pieces
    labels[2, :13] = -100
    labels[3, 12] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    out = reshape_for_length(batch, length)
    k = SEQ // length
    for name in ("input_ids", "shift_labels", "attention_mask"):
        assert out[name].shape == (4 * k, length), name
    assert "labels" not in out and "labels" in batch  # a new dict: the caller's batch is untouched
    assert torch.equal(out["input_ids"].reshape(4, SEQ), ids)  # a row's pieces are consecutive, in order
    # the count the Trainer computes on the full rows (labels[:, 1:]) is the count of targets after the split
    trainer_count = (labels[:, 1:] != -100).sum()
    assert (out["shift_labels"] != -100).sum() == trainer_count
    # the last position of piece j predicts the first token of piece j + 1; the last position of a row, nothing
    pieces = out["shift_labels"].view(4, k, length)
    assert torch.equal(pieces[:, :-1, -1], labels.view(4, k, length)[:, 1:, 0])
    assert (pieces[:, -1, -1] == -100).all()
    # negative control: shifting inside each piece (the naive split) loses the targets at the inner boundaries
    naive = (labels.reshape(4 * k, length)[:, 1:] != -100).sum()
    assert naive < trainer_count


def test_reshape_restarts_position_ids_and_refuses_other_shapes():
    ids = torch.arange(48).view(2, SEQ)
    packed = torch.cat([torch.arange(10), torch.arange(14)]).repeat(2, 1)  # two documents per row
    out = reshape_for_length({"input_ids": ids, "labels": ids, "position_ids": packed}, 8)
    # rows: [0..7], [8, 9 | 0..5] -> the first document's tail restarts at 0, [6..13] -> [0..7]
    expected = torch.tensor([list(range(8)), [0, 1, 0, 1, 2, 3, 4, 5], list(range(8))]).repeat(2, 1)
    assert torch.equal(out["position_ids"], expected)
    plain = reshape_for_length({"input_ids": ids, "labels": ids, "position_ids": torch.arange(SEQ).repeat(2, 1)}, 6)
    assert torch.equal(plain["position_ids"], torch.arange(6).repeat(8, 1))
    assert reshape_for_length({"input_ids": ids, "labels": ids}, SEQ)["labels"] is ids  # full length: unchanged
    with pytest.raises(ValueError, match="'lengths' has shape"):
        reshape_for_length({"input_ids": ids, "labels": ids, "lengths": torch.tensor([24, 24])}, 6)
    with pytest.raises(ValueError, match="length=5 must divide"):
        reshape_for_length({"input_ids": ids, "labels": ids}, 5)


def test_split_loss_equals_reference(tmp_path, token_stream, student):
    """compute_loss at a warmup step against each piece run alone, its targets the next tokens of the stream."""
    ids = token_stream[: 2 * SEQ].view(2, SEQ)
    args = config(tmp_path, max_steps=4, seq_warmup_steps=4, seq_warmup_schedule="doubling", seq_warmup_start_length=6)
    trainer = SALTTrainer(model=student, args=args, train_dataset=dataset(token_stream, 2))
    student.train()
    count = (ids[:, 1:] != -100).sum()
    loss = trainer.compute_loss(student, {"input_ids": ids, "labels": ids}, num_items_in_batch=count)  # step 0: L = 6

    targets = F.pad(ids[:, 1:], (0, 1), value=-100).reshape(8, 6)
    logits = student(input_ids=ids.reshape(8, 6)).logits.double()  # positions 0..5 in every piece
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum") / count
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)

    trainer.state.global_step = 4  # warmup over: the full rows
    full = trainer.compute_loss(student, {"input_ids": ids, "labels": ids}, num_items_in_batch=count)
    full_logits = student(input_ids=ids).logits[:, :-1].reshape(-1, logits.shape[-1]).double()
    full_ref = F.cross_entropy(full_logits, ids[:, 1:].reshape(-1), reduction="sum") / count
    assert full.item() == pytest.approx(full_ref.item(), rel=1e-5)
    assert abs(full.item() - loss.item()) > 1e-3  # the split changes the loss: the reference above is not trivial


# ---- 3. in training: the schedule by global step, the teacher's inputs, the token count -----------------------------


class CountingTrainer(SALTTrainer):
    """Records num_items_in_batch of every micro-batch, with the step it belongs to."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.counts.append((self.state.global_step, int(num_items_in_batch)))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_training_follows_the_schedule_and_the_teacher_sees_the_same_rows(
    tmp_path, token_stream, student, teacher, monkeypatch
):
    ds = dataset(token_stream, 24, supervised=[24, 5, 17, 2] * 6)
    args = config(
        tmp_path,
        max_steps=6,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        kd_steps=3,
        seq_warmup_steps=4,
        seq_warmup_schedule="doubling",
        seq_warmup_start_length=6,
    )
    trainer = CountingTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds)
    trainer.counts = []
    seen = {"student": [], "teacher": []}

    def capture(name):
        def hook(mod, hook_args, kwargs):
            tensors = {k: v.clone() for k, v in kwargs.items() if torch.is_tensor(v)}
            seen[name].append((trainer.state.global_step, tensors))

        return hook

    student.register_forward_pre_hook(capture("student"), with_kwargs=True)
    teacher.register_forward_pre_hook(capture("teacher"), with_kwargs=True)
    targets = []  # supervised tokens the loss saw, per micro-batch
    real_loss = trainer.fused_head.loss  # either loss implementation

    def counting_loss(*a, **k):
        outputs, out = real_loss(*a, **k)
        targets.append(int(out.num_tokens))
        return outputs, out

    monkeypatch.setattr(trainer.fused_head, "loss", counting_loss)
    trainer.train()

    shapes = [(step, tuple(t["input_ids"].shape)) for step, t in seen["student"]]
    rows = {0: 8, 1: 8, 2: 4, 3: 4, 4: 2, 5: 2}  # 2 rows of 24 as 8 x 6, 4 x 12, 2 x 24
    assert shapes == [(s, (rows[s], SEQ * 2 // rows[s])) for s in range(6) for _ in range(2)]
    # the teacher: on the KD steps only, with exactly the student's (split) tensors
    assert [step for step, _ in seen["teacher"]] == [0, 0, 1, 1, 2, 2]
    for (step, t_inputs), (s_step, s_inputs) in zip(seen["teacher"], seen["student"][:6], strict=True):
        assert step == s_step and set(t_inputs) == set(s_inputs)
        assert all(torch.equal(t_inputs[k], s_inputs[k]) for k in s_inputs)
    # per step, the targets the loss saw add up to the Trainer's num_items_in_batch (counted on the full rows)
    for step in range(6):
        step_counts = {n for s, n in trainer.counts if s == step}
        assert len(step_counts) == 1
        assert sum(targets[2 * step : 2 * step + 2]) == step_counts.pop()
    logs = train_logs(trainer)
    assert all(math.isfinite(h["loss"]) for h in logs) and logs[0]["kd_loss"] > 1e-3


def test_start_length_that_does_not_divide_the_rows_stops_training(tmp_path, token_stream, student):
    args = config(tmp_path, max_steps=2, per_device_train_batch_size=2, seq_warmup_steps=2, seq_warmup_start_length=5)
    trainer = SALTTrainer(model=student, args=args, train_dataset=dataset(token_stream, 4))
    with pytest.raises(ValueError, match="seq_warmup_start_length=5"):
        trainer.train()


# ---- 4. resume inside the warmup ------------------------------------------------------------------------------------


def test_resume_inside_the_warmup_matches_uninterrupted(tmp_path, tokenizer, token_stream, teacher):
    """Sequence-length warmup, layer-wise rates and a cosine floor together, interrupted inside the warmup."""
    ds = dataset(token_stream, 32, supervised=[24, 5, 17, 2] * 8)

    def run(out, resume=None, seq_warmup_steps=4, save_strategy="steps"):
        args = config(
            tmp_path,
            output_dir=str(tmp_path / out),
            **RESUME_RUN,
            save_strategy=save_strategy,
            save_steps=1,
            warmup_steps=1,
            seq_warmup_steps=seq_warmup_steps,
            seq_warmup_schedule="linear",
            seq_warmup_start_length=6,
            layerwise_lr_decay=0.7,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": 0.1},
        )
        trainer = SALTTrainer(
            model=make_llama(len(tokenizer), 32, 2, seed=0), teacher_model=teacher, args=args, train_dataset=ds
        )
        trainer.train(resume_from_checkpoint=resume)
        return flat_params(trainer.model)

    full = run("full")
    for ckpt in ["checkpoint-1", "checkpoint-3"]:  # lengths 6 | 8 and 12 | 12 on either side of the interruption
        resumed = run(f"resumed-{ckpt}", resume=str(tmp_path / "full" / ckpt))
        # the same operations on state restored bit for bit (see test_trainer's resume test): equal, not close
        assert torch.equal(resumed, full), ckpt
    # the warmup shapes this run: a run without it ends elsewhere, so the equality above covers the warmup
    assert (run("no-warmup", seq_warmup_steps=0, save_strategy="no") - full).abs().max() > 1e-4


# ---- 5. layer-wise learning rates -----------------------------------------------------------------------------------


def test_layer_depths_llama_gpt2_and_lora(student):
    depths, top = layer_depths(student)
    assert top == TOP and depths == {name: expected_depth(name) for name, _ in student.named_parameters()}

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2, n_positions=32))
    depths, top = layer_depths(gpt2)  # tied head: it is the embedding matrix, at depth 0
    assert top == 4 and depths["transformer.wte.weight"] == 0 and depths["transformer.wpe.weight"] == 0
    assert depths["transformer.h.2.mlp.c_fc.weight"] == 3 and depths["transformer.ln_f.weight"] == 4

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(student, LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.0))
    depths, top = layer_depths(lora)
    assert top == TOP and depths["base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight"] == 2
    params = [p for p in lora.parameters() if p.requires_grad]
    groups = layerwise_param_groups([{"params": params, "lr": 1.0}], lora, decay=0.5, direction="top_down")
    assert sorted(g["lr"] for g in groups) == [0.25, 0.5]  # LoRA in layers 0 and 1 only
    assert sum(len(g["params"]) for g in groups) == len(params)


@pytest.mark.parametrize(
    ("optim", "direction"),
    [("adamw_torch_fused", "top_down"), ("adafactor", "bottom_up"), ("schedule_free_adamw", "top_down")],
)
def test_layerwise_learning_rates_read_back_from_the_optimizer(
    tmp_path, token_stream, student, teacher, optim, direction
):
    args = config(
        tmp_path,
        max_steps=2,
        per_device_train_batch_size=4,
        optim=optim,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        weight_decay=0.1,
        kd_steps=1,
        layerwise_lr_decay=0.5,
        layerwise_lr_direction=direction,
    )
    trainer = SALTTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(token_stream, 8))
    trainer.train()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    found = []
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            assert group["lr"] == pytest.approx(1e-3 * multiplier(name, 0.5, direction), rel=1e-12), name
            assert group["weight_decay"] == (0.0 if "norm" in name else 0.1), name  # the Trainer's decay groups kept
            found.append(name)
    assert sorted(found) == sorted(n for n, p in trainer.model.named_parameters() if p.requires_grad)
    assert len({g["lr"] for g in trainer.optimizer.param_groups}) == TOP + 1
    # the first group runs at the base rate, and the Trainer logs the first group's rate
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-3
    assert {h["learning_rate"] for h in train_logs(trainer)} == {1e-3}


def test_layerwise_sgd_step_scales_each_layers_update(tmp_path, tokenizer, token_stream):
    """One SGD step: each parameter moves by its layer's multiplier times the plain step (the optimizer uses them)."""
    ds = dataset(token_stream, 4)

    def step(decay):
        model = make_llama(len(tokenizer), 32, 2, seed=0)
        args = one_sgd_step_config(str(tmp_path / "out"), 4, 1, use_cpu=True, layerwise_lr_decay=decay)
        SALTTrainer(model=model, args=args, train_dataset=ds).train()
        return dict(model.named_parameters())

    start = dict(make_llama(len(tokenizer), 32, 2, seed=0).named_parameters())
    plain, layered = step(1.0), step(0.5)
    # Both runs compute the same gradient g (same weights, rows and kernels). SGD writes theta0 - lr * m * g with lr
    # and the multiplier m powers of two, so lr * m * g is exact and each new weight carries one rounding to fp32, at
    # most u * |theta1| (u = 2^-24). The differences below, in float64, are exact: only those two roundings remain.
    u = torch.finfo(torch.float32).eps / 2
    for name, p0 in start.items():
        m = multiplier(name, 0.5, "top_down")
        theta, plain_theta, p0 = layered[name].double(), plain[name].double(), p0.double()
        error = ((theta - p0) - m * (plain_theta - p0)).abs()
        assert (error <= u * (theta.abs() + m * plain_theta.abs())).all(), (name, error.max().item())
    moved = (plain["model.embed_tokens.weight"] - start["model.embed_tokens.weight"]).abs().max()
    assert moved > 1e-4  # the embeddings (multiplier 1/8) did move in the plain step: the comparison has teeth


def test_user_optimizer_is_left_alone(tmp_path, token_stream, student):
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    args = config(tmp_path, max_steps=1, per_device_train_batch_size=4, layerwise_lr_decay=0.5)
    trainer = SALTTrainer(
        model=student, args=args, train_dataset=dataset(token_stream, 4), optimizers=(optimizer, None)
    )
    trainer.train()
    assert len(optimizer.param_groups) == 1


# ---- 6. the Trainer's LR schedules and optimizers, each with SALT ---------------------------------------------------

SCHEDULES = {  # lr_scheduler_kwargs, the final rate as a fraction of each group's rate
    "warmup_stable_decay": ({"num_decay_steps": 2, "min_lr_ratio": 0.1}, 0.1),
    "cosine_with_min_lr": ({"min_lr_rate": 0.1}, 0.1),
    "linear": ({}, 0.0),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_lr_schedules_complete_a_salt_run(tmp_path, token_stream, student, teacher, schedule):
    kwargs, floor = SCHEDULES[schedule]
    args = config(
        tmp_path,
        max_steps=6,
        warmup_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        lr_scheduler_type=schedule,
        lr_scheduler_kwargs=kwargs,
        kd_steps=2,
        layerwise_lr_decay=0.5,
    )
    trainer = SALTTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(token_stream, 16))
    trainer.train()
    logs = train_logs(trainer)
    assert len(logs) == 6 and all(math.isfinite(h["loss"]) for h in logs) and logs[0]["kd_loss"] > 1e-3
    lrs = [h["learning_rate"] for h in logs]  # the rate of each step (first group: multiplier 1)
    assert lrs[1] == pytest.approx(1e-3)  # warmup over
    if schedule == "warmup_stable_decay":
        assert lrs[1:5] == pytest.approx([1e-3] * 4) and lrs[5] < 1e-3  # stable, then the decay of 2 steps
    else:
        assert all(a > b for a, b in zip(lrs[1:-1], lrs[2:], strict=True)) and min(lrs[1:]) >= floor * 1e-3
    # the end of the schedule: each group at its own rate times the floor (the floor is relative per group)
    for group in trainer.optimizer.param_groups:
        assert group["lr"] == pytest.approx(floor * 1e-3 * group["lr_multiplier"], abs=1e-15)


@pytest.mark.parametrize("optim", ["adamw_torch_fused", "adafactor", "schedule_free_adamw"])
def test_optimizers_complete_a_salt_run(tmp_path, tokenizer, token_stream, teacher, optim):
    student = make_llama(len(tokenizer), 32, 2, seed=0)
    args = config(tmp_path, max_steps=3, per_device_train_batch_size=4, optim=optim, learning_rate=1e-3, kd_steps=2)
    trainer = SALTTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(token_stream, 12))
    trainer.train()
    logs = train_logs(trainer)
    assert len(logs) == 3 and all(math.isfinite(h["loss"]) for h in logs) and logs[0]["kd_loss"] > 1e-3
    assert (flat_params(student) - flat_params(make_llama(len(tokenizer), 32, 2, seed=0))).abs().max() > 1e-5
    if optim == "adamw_torch_fused":
        assert trainer.optimizer.param_groups[0]["fused"]


# ---- 7. config and command line -------------------------------------------------------------------------------------

BAD = [
    ({"seq_warmup_steps": -1}, "seq_warmup_steps=-1"),
    ({"seq_warmup_start_length": 0}, "seq_warmup_start_length=0"),
    ({"layerwise_lr_decay": 0.0}, "layerwise_lr_decay=0.0"),
    ({"layerwise_lr_decay": 1.5}, "layerwise_lr_decay=1.5"),
    ({"layerwise_lr_decay": 0.8, "optim": "lomo"}, "optim='lomo'"),
    ({"lr_scheduler_type": "warmup_stable_decay"}, "num_decay_steps"),
    ({"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"num_cycles": 0.5}}, "min_lr_rate"),
]


@pytest.mark.parametrize(("kwargs", "fragment"), BAD, ids=[fragment for _, fragment in BAD])
def test_bad_config_values_are_named(tmp_path, kwargs, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        SALTConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


def test_layerwise_refuses_a_deepspeed_config_with_its_own_optimizer(tmp_path):
    pytest.importorskip("deepspeed")
    ds_config = {
        "zero_optimization": {"stage": 2},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
        "train_micro_batch_size_per_gpu": "auto",
    }
    with pytest.raises(ValueError, match="'optimizer' section"):
        SALTConfig(output_dir=str(tmp_path), report_to="none", deepspeed=ds_config, layerwise_lr_decay=0.8)


def test_cli_lists_the_fields_and_reads_schedule_kwargs_from_yaml(tmp_path, capsys):
    actions = {a.dest: a for a in HfArgumentParser(train_cli.ARG_CLASSES)._actions}
    assert sorted(actions["seq_warmup_schedule"].choices) == ["doubling", "linear"]
    assert sorted(actions["layerwise_lr_direction"].choices) == ["bottom_up", "top_down"]
    assert {"seq_warmup_steps", "seq_warmup_start_length", "layerwise_lr_decay"} <= set(actions)
    with pytest.raises(SystemExit) as exit_:  # `salt-train --help` renders (argparse %-formats every help string)
        train_cli.parse_args(["--help"])
    assert exit_.value.code == 0 and "--seq_warmup_schedule {linear,doubling}" in capsys.readouterr().out

    yaml_file = tmp_path / "wsd.yaml"
    yaml_file.write_text(
        "lr_scheduler_type: warmup_stable_decay\nlr_scheduler_kwargs:\n  num_decay_steps: 30\n"
        "  decay_type: 1-sqrt\nseq_warmup_steps: 10\n"
    )
    _, _, args, _ = train_cli.parse_args(["--config", str(yaml_file), "--output_dir", str(tmp_path / "o")])
    assert args.lr_scheduler_kwargs == {"num_decay_steps": 30, "decay_type": "1-sqrt"} and args.seq_warmup_steps == 10
    _, _, args, _ = train_cli.parse_args(
        [
            "--config",
            str(yaml_file),
            "--output_dir",
            str(tmp_path / "o"),
            "--lr_scheduler_kwargs",
            '{"num_decay_steps": 5}',
        ]
    )
    assert args.lr_scheduler_kwargs == {"num_decay_steps": 5}

    # a start length that cannot split --seq_length: refused before anything is written
    out = tmp_path / "refused"
    code = train_cli.main(
        [
            "--output_dir",
            str(out),
            "--seq_length",
            "128",
            "--seq_warmup_steps",
            "10",
            "--seq_warmup_start_length",
            "48",
            "--report_to",
            "none",
            "--use_cpu",
            "true",
        ]
    )
    assert code == 2 and "seq_warmup_start_length=48" in capsys.readouterr().err and not out.exists()
