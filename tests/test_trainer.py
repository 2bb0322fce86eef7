"""SALTTrainer: normalisation, schedule, teacher lifecycle, logging, resume, PEFT, vocabulary checks."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
import torch
from datasets import Dataset
from fixtures import (
    RESUME_RUN,
    SEQ,
    config,
    dataset,
    flat_params,
    make_llama,
    one_sgd_step_config,
    rows,
    save_teacher,
    tiny_salt_trainer,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

from salt_hf import SALTConfig, SALTTrainer


def plain_args(args: SALTConfig, **changes) -> TrainingArguments:
    """The same arguments for a plain transformers Trainer (the SALT fields dropped)."""
    names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    values = {k: v for k, v in vars(args).items() if k in names}
    return TrainingArguments(**{**values, **changes})


# ---- 1. normalisation: one optimizer step is the same for every split of the batch --------------------------------

SPLITS = [(4, 1), (2, 2), (1, 4)]  # per-device batch x gradient accumulation


class PerMicroBatchMeanTrainer(SALTTrainer):
    """Negative control: the classic bug of averaging the loss per micro-batch."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        local = (inputs["labels"][:, 1:] != -100).sum()
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return loss * num_items_in_batch / local / self.args.gradient_accumulation_steps


def one_sgd_step(tmp_path, student, teacher, ds, batch, accum, trainer_cls=SALTTrainer, kd_weight=0.5):
    args = one_sgd_step_config(str(tmp_path / "out"), batch, accum, use_cpu=True, kd_weight=kd_weight)
    trainer = trainer_cls(model=student, teacher_model=teacher, args=args, train_dataset=ds)
    trainer.train()
    return flat_params(trainer.model)


@pytest.mark.parametrize("kd_weight", [0.0, 0.5, 1.0])
def test_one_step_independent_of_batch_split(tmp_path, tokenizer, token_stream, teacher, kd_weight):
    ds = dataset(token_stream, 4, supervised=[24, 5, 17, 2])
    results = [
        one_sgd_step(tmp_path, make_llama(len(tokenizer), 32, 2, seed=0), teacher, ds, b, a, kd_weight=kd_weight)
        for b, a in SPLITS
    ]
    start = flat_params(make_llama(len(tokenizer), 32, 2, seed=0))
    assert (results[0] - start).abs().max() > 1e-3  # the step moved the weights
    # One SGD step, theta - lr * g: the splits add the same per-token gradient terms in other orders, which moves an
    # entry of lr * g (at most ~0.1 here) by a few of its ulps (7.5e-9 each), and theta (|theta| <= 1, RMSNorm weights
    # start at 1) then rounds to a neighbouring float at most (1.2e-7). 1e-6 is several times that sum; no optimizer
    # state magnifies it (AdamW would, see section 2). Measured: at most 1.1e-8.
    for r in results[1:]:
        assert (r - results[0]).abs().max() <= 1e-6


def test_per_micro_batch_mean_breaks_split_invariance(tmp_path, tokenizer, token_stream, teacher):
    ds = dataset(token_stream, 4, supervised=[24, 5, 17, 2])
    ref = one_sgd_step(tmp_path, make_llama(len(tokenizer), 32, 2, seed=0), teacher, ds, 4, 1)
    bad = one_sgd_step(
        tmp_path, make_llama(len(tokenizer), 32, 2, seed=0), teacher, ds, 1, 4, trainer_cls=PerMicroBatchMeanTrainer
    )
    assert (bad - ref).abs().max() > 1e-4


@pytest.mark.parametrize("mix, nll_w, kd_w", [("convex", 0.7, 0.3), ("additive", 1.0, 0.3 / 0.7)])
def test_loss_equals_naive_reference(tmp_path, tokenizer, token_stream, student, teacher, mix, nll_w, kd_w):
    """compute_loss against (a NLL + b KL(teacher||student)) / tokens written out naively: (a, b) = (1-w, w) for
    kd_mix="convex", (1, w / (1-w)) for "additive"."""
    ds = dataset(token_stream, 4, supervised=[24, 5, 17, 2])
    args = config(tmp_path, max_steps=4, kd_weight=0.3, kd_mix=mix)
    trainer = SALTTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds)
    trainer.resolve_kd_steps(4)
    teacher.eval()
    batch = {k: torch.tensor(ds[k]) for k in ("input_ids", "labels")}
    student.train()
    loss = trainer.compute_loss(student, batch, num_items_in_batch=(batch["labels"][:, 1:] != -100).sum())
    grad = torch.autograd.grad(loss, student.lm_head.weight)[0]

    logits = student(input_ids=batch["input_ids"]).logits[:, :-1].double()
    t_logits = teacher(input_ids=batch["input_ids"]).logits[:, :-1].double().detach()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    log_q = torch.log_softmax(logits, -1)
    log_p = torch.log_softmax(t_logits, -1)
    nll = -log_q.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    ref = ((nll_w * nll + kd_w * kl) * mask).sum() / mask.sum()
    ref_grad = torch.autograd.grad(ref, student.lm_head.weight)[0]
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad.double(), rtol=1e-4, atol=1e-6)


def test_additive_mix_takes_the_convex_mix_adam_steps_during_the_kd_stage(tmp_path, tokenizer, token_stream, teacher):
    """Adam is invariant to the loss's scale: with w constant the two mixes take the same steps (no clipping, a
    negligible epsilon); they differ only where the KD stage ends."""
    ds = dataset(token_stream, 8, supervised=[24, 5, 17, 2, 30, 9, 11, 20])
    params = {}
    for mix in ("convex", "additive"):
        args = config(
            tmp_path,
            output_dir=str(tmp_path / mix),
            max_steps=4,
            per_device_train_batch_size=2,
            learning_rate=1e-3,
            kd_weight=0.5,
            kd_ratio=1.0,
            kd_mix=mix,
            max_grad_norm=0.0,
            adam_epsilon=1e-12,
        )
        trainer = SALTTrainer(
            model=make_llama(len(tokenizer), 32, 2, seed=3), teacher_model=teacher, args=args, train_dataset=ds
        )
        trainer.train()
        params[mix] = flat_params(trainer.model)
    start = flat_params(make_llama(len(tokenizer), 32, 2, seed=3))
    assert (params["convex"] - start).abs().max() > 1e-3  # it trained
    torch.testing.assert_close(params["additive"], params["convex"], rtol=0, atol=1e-6)


# ---- 2. w = 0 / no teacher is plain Trainer ----------------------------------------------------------------------


def test_no_teacher_and_zero_weight_equal_plain_trainer(tmp_path, tokenizer, token_stream, teacher):
    # The two trainers compute the same loss by different code (salt_loss against the Trainer's cross-entropy), so the
    # gradients differ in their last bits. Plain SGD keeps a weight difference at lr times that: three steps at
    # lr 0.5, 0.33, 0.17 put each weight at most a neighbouring float away per step (1.2e-7 at |theta| <= 1) plus
    # lr times a few ulps of the gradient, under 1e-6 even if the feedback of one step's difference into the next
    # gradient doubled it. Measured: 7.5e-9 to 1.5e-8 across CPU instruction sets. The default AdamW divides by
    # sqrt(v) + eps and turns a 1e-11 difference of a gradient near eps = 1e-8 into lr * 1e-11 / (4 eps), ~1e-6 of
    # weight at lr 3e-3: 7.8e-7 to 9.3e-7 here, 2.15e-6 on another machine (issue 14), a pass by luck.
    ds = dataset(token_stream, 16, supervised=[24, 5, 17, 2])
    common = dict(
        max_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=2, optim="sgd", learning_rate=0.5
    )
    plain_train_args = plain_args(config(tmp_path, **common), output_dir=str(tmp_path / "p"))
    plain = Trainer(model=make_llama(len(tokenizer), 32, 2, seed=0), args=plain_train_args, train_dataset=ds)
    plain.train()
    start = flat_params(make_llama(len(tokenizer), 32, 2, seed=0))
    assert (flat_params(plain.model) - start).abs().max() > 1e-2  # the steps moved the weights
    for teacher_model, weight in [(None, 0.5), (teacher, 0.0)]:
        salt = SALTTrainer(
            model=make_llama(len(tokenizer), 32, 2, seed=0),
            teacher_model=teacher_model,
            args=config(tmp_path, kd_weight=weight, **common),
            train_dataset=ds,
        )
        salt.train()
        assert (flat_params(salt.model) - flat_params(plain.model)).abs().max() <= 1e-6
        losses = [h["loss"] for h in salt.state.log_history if "loss" in h]
        plain_losses = [h["loss"] for h in plain.state.log_history if "loss" in h]
        assert losses == pytest.approx(plain_losses, rel=1e-5)


# ---- 3. the teacher: runs on exactly the KD steps, sees the student's inputs, is released --------------------------


class Recorder(TrainerCallback):
    def __init__(self):
        self.teacher_at_begin = "unset"

    def on_train_begin(self, args, state, control, **kwargs):
        self.teacher_at_begin = self.trainer.teacher_model


def test_teacher_runs_on_exactly_the_kd_steps_and_is_released(tmp_path, token_stream, student, teacher):
    ds = dataset(token_stream, 24)
    args = config(tmp_path, max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=2, kd_steps=3)
    trainer = SALTTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds)
    calls = []
    teacher.register_forward_hook(lambda mod, inp, out: calls.append(trainer.state.global_step))
    trainer.train()
    assert calls == [0, 0, 1, 1, 2, 2]  # two micro-batches per KD step, none from n_KD on
    assert trainer.teacher_model is None
    # never trainable, never in the optimizer
    assert not any(p.requires_grad for p in teacher.parameters())
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in teacher.parameters()}


@pytest.mark.parametrize("schedule", ["step", "linear_decay", "linear_ratio_decay"])
def test_logged_kd_weight_follows_schedule(tmp_path, token_stream, student, teacher, schedule):
    from salt_hf.schedules import kd_weight

    ds = dataset(token_stream, 16)
    args = config(
        tmp_path, max_steps=6, per_device_train_batch_size=2, kd_steps=4, kd_schedule=schedule, kd_weight=0.6
    )
    trainer = SALTTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6
    for step, h in enumerate(logs):
        assert {"loss", "nll_loss", "kd_loss", "kd_weight"} <= set(h)
        w = kd_weight(step, schedule=schedule, weight=0.6, kd_steps=4)
        assert h["kd_weight"] == pytest.approx(w)
        if w > 0:
            assert h["kd_loss"] > 1e-3  # KD far above rounding (different seeds and sizes)
            assert h["loss"] == pytest.approx((1 - w) * h["nll_loss"] + w * h["kd_loss"], rel=1e-4)
        else:
            assert h["kd_loss"] == 0.0 and h["loss"] == pytest.approx(h["nll_loss"], rel=1e-5)


def test_teacher_sees_the_students_inputs(tmp_path, token_stream, student, teacher):
    """Packed rows with position ids restarting at each document: the teacher gets the same tensors."""
    ids = rows(token_stream, 4)
    position_ids = torch.cat([torch.arange(10), torch.arange(14)]).repeat(4, 1)
    ds = Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "labels": ids.tolist(),
            "position_ids": position_ids.tolist(),
            "attention_mask": torch.ones_like(ids).tolist(),
        }
    )
    seen = {}

    def capture(name):
        def hook(mod, args, kwargs):
            seen[name] = {k: v.clone() for k, v in kwargs.items() if torch.is_tensor(v)}

        return hook

    student.register_forward_pre_hook(capture("student"), with_kwargs=True)
    teacher.register_forward_pre_hook(capture("teacher"), with_kwargs=True)
    args = config(tmp_path, max_steps=1, per_device_train_batch_size=4, kd_steps=1)
    SALTTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds).train()
    assert set(seen["teacher"]) == set(seen["student"]) == {"input_ids", "attention_mask", "position_ids"}
    for key, value in seen["student"].items():
        assert torch.equal(seen["teacher"][key], value)
    assert torch.equal(seen["teacher"]["position_ids"][0], position_ids[0])


# ---- 4. resume: interrupted runs end with the uninterrupted run's weights -------------------------------------------


def test_resume_inside_and_after_kd_stage_matches_uninterrupted(
    tmp_path, tokenizer, token_stream, teacher, teacher_loads
):
    teacher_dir = save_teacher(teacher, tokenizer, tmp_path / "teacher")
    loads = teacher_loads
    ds = dataset(token_stream, 32, supervised=[24, 5, 17, 2] * 8)

    def run(out, resume=None):
        args = config(
            tmp_path, output_dir=str(tmp_path / out), save_strategy="steps", save_steps=1, warmup_steps=2, **RESUME_RUN
        )
        trainer = tiny_salt_trainer(tokenizer, teacher_dir, args, ds)
        recorder = Recorder()
        recorder.trainer = trainer
        trainer.add_callback(recorder)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, recorder

    full, _ = run("full")
    assert len(loads) == 1
    for ckpt in ["checkpoint-2", "checkpoint-4"]:
        loads.clear()
        resumed, recorder = run("full", resume=str(tmp_path / "full" / ckpt))
        # a resumed run replays the same operations on state restored bit for bit (weights, AdamW moments, schedule,
        # data order, a teacher reloaded from the same file): its weights are equal, not close
        assert torch.equal(flat_params(resumed.model), flat_params(full.model))
        if ckpt == "checkpoint-4":  # past n_KD = 3: the teacher is never loaded
            assert loads == [] and recorder.teacher_at_begin is None
        else:
            assert len(loads) == 1

    # the teacher never lands in a checkpoint
    ckpt_keys = set(load_file(str(tmp_path / "full" / "checkpoint-2" / "model.safetensors")))
    assert ckpt_keys == set(full.model.state_dict())
    state = json.loads((tmp_path / "full" / "checkpoint-6" / "trainer_state.json").read_text())
    assert [h["kd_weight"] for h in state["log_history"] if "kd_weight" in h] == [0.5] * 3 + [0.0] * 3


# ---- 5. vocabulary and tokenizer checks -----------------------------------------------------------------------------


def test_padded_vocabularies_distil_over_the_real_vocabulary(tmp_path, tokenizer, token_stream):
    student = make_llama(len(tokenizer) + 64, 32, 2, seed=0)  # padded embedding, same tokenizer
    teacher = make_llama(len(tokenizer) + 8, 16, 1, seed=1)
    ds = dataset(token_stream, 4)
    args = config(tmp_path, max_steps=1, per_device_train_batch_size=4)
    trainer = SALTTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=tokenizer
    )
    assert trainer.kd_vocab_size == len(tokenizer)
    trainer.train()
    kd_loss = next(h["kd_loss"] for h in trainer.state.log_history if "kd_loss" in h)
    assert math.isfinite(kd_loss) and kd_loss > 0

    no_tok = SALTTrainer(
        model=make_llama(len(tokenizer) + 64, 32, 2, 0), teacher_model=teacher, args=args, train_dataset=ds
    )
    assert no_tok.kd_vocab_size == len(tokenizer) + 8  # the smaller size, with a warning


def test_different_tokenizers_are_refused_before_training(tmp_path, tokenizer, texts, student, teacher):
    from salt_hf.data import train_bpe_tokenizer

    other = train_bpe_tokenizer(texts[:2], vocab_size=len(tokenizer))
    with pytest.raises(ValueError, match="tokenizer differs"):
        SALTTrainer(
            model=student,
            teacher_model=teacher,
            args=config(tmp_path, max_steps=1),
            processing_class=tokenizer,
            teacher_processing_class=other,
        )
    assert not os.path.exists(tmp_path / "out")


def test_tokenizer_larger_than_embeddings_is_refused(tmp_path, tokenizer, teacher):
    small = make_llama(len(tokenizer) - 10, 32, 2, seed=0)
    with pytest.raises(ValueError, match="resize"):
        SALTTrainer(model=small, teacher_model=teacher, args=config(tmp_path, max_steps=1), processing_class=tokenizer)


def test_wrong_args_type_is_refused(tmp_path, student, teacher):
    with pytest.raises(TypeError, match="SALTConfig"):
        SALTTrainer(model=student, teacher_model=teacher, args=TrainingArguments(output_dir=str(tmp_path)))


# ---- 6. eval, PEFT, gradient checkpointing, optimizers, mixed precision ---------------------------------------------


def test_eval_reports_plain_nll_and_perplexity(tmp_path, tokenizer, token_stream, teacher):
    train, val = dataset(token_stream, 8), dataset(token_stream, 4, offset=8 * SEQ)
    args = config(tmp_path, max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4)
    salt = SALTTrainer(
        model=make_llama(len(tokenizer), 32, 2, 0),
        teacher_model=teacher,
        args=args,
        train_dataset=train,
        eval_dataset=val,
    )
    plain = Trainer(
        model=make_llama(len(tokenizer), 32, 2, 0),
        args=plain_args(args, output_dir=str(tmp_path / "p")),
        eval_dataset=val,
    )
    metrics, plain_metrics = salt.evaluate(), plain.evaluate()
    assert metrics["eval_loss"] == pytest.approx(plain_metrics["eval_loss"], rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-6)


def test_lora_student_trains(tmp_path, token_stream, student, teacher):
    from peft import LoraConfig, get_peft_model

    peft_student = get_peft_model(student, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    base_before = student.model.layers[0].self_attn.q_proj.base_layer.weight.clone()
    args = config(tmp_path, max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2, kd_steps=2)
    trainer = SALTTrainer(model=peft_student, teacher_model=teacher, args=args, train_dataset=dataset(token_stream, 8))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0.1 for h in logs)
    assert logs[0]["kd_loss"] > 1e-3
    assert torch.equal(student.model.layers[0].self_attn.q_proj.base_layer.weight, base_before)
    lora_b = student.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert lora_b.abs().max() > 0  # LoRA B starts at 0: it moved


def test_gradient_checkpointing_matches(tmp_path, tokenizer, token_stream, teacher):
    ds = dataset(token_stream, 8)
    finals = []
    for gc in (False, True):
        args = config(tmp_path, max_steps=2, per_device_train_batch_size=4, gradient_checkpointing=gc, kd_steps=1)
        trainer = SALTTrainer(
            model=make_llama(len(tokenizer), 32, 2, 0), teacher_model=teacher, args=args, train_dataset=ds
        )
        trainer.train()
        finals.append(flat_params(trainer.model))
    # Checkpointing recomputes each layer's forward with the same kernels on the same inputs, and every gradient sums
    # the same terms in the same order: the weights are equal bit for bit, even after AdamW, which would magnify any
    # difference (a tolerance here would only hide one).
    assert torch.equal(finals[0], finals[1])


@pytest.mark.parametrize("optim", ["adamw_torch", "adafactor", "sgd", "rmsprop"])
def test_optimizers(tmp_path, token_stream, student, teacher, optim):
    args = config(tmp_path, max_steps=2, per_device_train_batch_size=4, optim=optim, kd_steps=1)
    trainer = SALTTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(token_stream, 8))
    trainer.train()
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


def test_bf16_mixed_precision_on_cpu(tmp_path, token_stream, student, teacher):
    args = config(tmp_path, max_steps=2, per_device_train_batch_size=4, bf16=True, kd_steps=1)
    trainer = SALTTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(token_stream, 8))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(math.isfinite(h["loss"]) for h in logs) and logs[0]["kd_loss"] > 1e-3


def test_final_save_reloads_with_automodel(tmp_path, token_stream, tokenizer, student, teacher):
    args = config(tmp_path, max_steps=2, per_device_train_batch_size=4, kd_steps=1)
    trainer = SALTTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=dataset(token_stream, 8),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "final"))
    assert (flat_params(reloaded) - flat_params(trainer.model)).abs().max() == 0
