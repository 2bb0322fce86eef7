"""Measurements around the end of the KD stage (issue 24, point 0), for paper_regime.py's runs.

- `GradientProbe`: a SALTTrainer that, every `every` optimizer steps, also takes the gradient of the NLL term and of
  the KD term apart on the step's first micro-batch (per-token means, plain logits) and records their norms and
  cosine: where the two terms pull against each other, the KD term holds the student back.
- `UpdateNorm`: AdamW's update norm ||theta_after - theta_before|| at every optimizer step, and the learning rate: the
  step size the optimizer actually took, which its second moment (a memory of ~1/(1 - beta2) steps) shapes.
- `Entropy`: the student's mean next-token entropy on fixed held-out rows at every evaluation, beside the teacher's.
- `cooldown`: a branch off a stored checkpoint whose learning rate falls linearly from its value at that step to 0,
  with the checkpoint's optimizer state (plain NLL, or KD continued): the annealed loss at that point of the run.

Each measurement lands in the trainer's `state.log_history` (and so in the run's stored `train_log`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoModelForCausalLM, TrainerCallback  # noqa: E402

from salt_hf import SALTTrainer  # noqa: E402


def token_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Forward KL(teacher || student) per token, averaged: the KD term of SALT at temperature 1."""
    t = F.log_softmax(teacher_logits.float(), -1)
    s = F.log_softmax(student_logits.float(), -1)
    return (t.exp() * (t - s)).sum(-1).mean()


class GradientProbe(SALTTrainer):
    """SALTTrainer plus the NLL / KD gradient probe every `probe_every` steps (a class attribute set by the suite)."""

    probe_every = 20

    def training_step(self, model, inputs, num_items_in_batch=None):
        step = self.state.global_step
        if step % self.probe_every == 0 and not getattr(self, "_probed_step", None) == step:
            self._probed_step = step
            self.log_probe(model, inputs, step)
        return super().training_step(model, inputs, num_items_in_batch)

    def log_probe(self, model, inputs, step: int) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        ids = inputs["input_ids"]
        logits = model(input_ids=ids).logits[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
        row = {
            "step": step,
            "probe_step": step,
            "probe_nll": nll.item(),
            "probe_kd_weight": self.current_kd_weight(step),
        }
        g_nll = torch.autograd.grad(nll, params, retain_graph=self.teacher is not None and self.kd_active(step))
        row["grad_norm_nll"] = _norm(g_nll)
        if self.teacher is not None and self.kd_active(step):
            with torch.no_grad():
                teacher_logits = self.teacher.logits({"input_ids": ids})[:, :-1]
            kd = token_kl(teacher_logits, logits)
            g_kd = torch.autograd.grad(kd, params)
            w = row["probe_kd_weight"]
            whole = [(1 - w) * a + w * b for a, b in zip(g_nll, g_kd, strict=True)]
            row |= {
                "probe_kd": kd.item(),
                "grad_norm_kd": _norm(g_kd),
                "grad_norm_whole": _norm(whole),
                "grad_cos_nll_kd": _dot(g_nll, g_kd) / (row["grad_norm_nll"] * _norm(g_kd) + 1e-30),
            }
        self.state.log_history.append(row)


def _norm(grads) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


def _dot(a, b) -> float:
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True))


class UpdateNorm(TrainerCallback):
    """||theta_after - theta_before|| of every optimizer step, logged in groups of `every` steps (mean, max)."""

    def __init__(self, every: int = 10):
        self.every, self.before, self.norms = every, None, []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.before = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        after = [p.detach() for p in model.parameters() if p.requires_grad]
        self.norms.append(_norm([a - b for a, b in zip(after, self.before, strict=True)]))
        self.before = None
        if len(self.norms) == self.every:
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else float("nan")
            state.log_history.append(
                {
                    "step": state.global_step,
                    "update_step": state.global_step + 1,  # the step just taken, counted from 1
                    "update_norm_mean": sum(self.norms) / len(self.norms),
                    "update_norm_max": max(self.norms),
                    "update_lr": float(lr),
                }
            )
            self.norms = []


def mean_entropy(model, rows: torch.Tensor, batch: int = 32) -> float:
    """Mean next-token entropy (nats) of `model` over `rows` (all positions)."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, rows.shape[0], batch):
            logp = F.log_softmax(model(input_ids=rows[i : i + batch].long()).logits.float(), -1)
            total += float(-(logp.exp() * logp).sum(-1).sum())
            count += logp.shape[0] * logp.shape[1]
    model.train(was_training)
    return total / count


class Entropy(TrainerCallback):
    """The student's mean next-token entropy on `rows` at every evaluation (and the teacher's once, at the first)."""

    def __init__(self, rows: torch.Tensor, teacher_dir: Path | None):
        self.rows, self.teacher_dir, self.teacher_entropy, self.last_step = rows, teacher_dir, None, None

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.last_step == state.global_step:  # one evaluation per eval set: measure once per step
            return
        self.last_step = state.global_step
        if self.teacher_dir is not None and self.teacher_entropy is None:
            teacher = AutoModelForCausalLM.from_pretrained(self.teacher_dir)
            self.teacher_entropy = mean_entropy(teacher, self.rows)
        row = {
            "step": state.global_step,
            "entropy_step": state.global_step,
            "student_entropy": mean_entropy(model, self.rows),
        }
        if self.teacher_entropy is not None:
            row["teacher_entropy"] = self.teacher_entropy
        state.log_history.append(row)


# ---- cooldown branches ----------------------------------------------------------------------------------------------


def cosine_lr(step: int, steps: int, peak: float = bench.LR, warmup: int = bench.WARMUP) -> float:
    """The recipe's learning rate at `step` (transformers' cosine with linear warmup)."""
    if step < warmup:
        return peak * step / max(1, warmup)
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


class BranchTrainer(SALTTrainer):
    """A cooldown branch: the checkpoint's optimizer state, its learning rate at the branch falling linearly to 0."""

    branch_from: Path | None = None  # the checkpoint folder (set per branch)
    branch_lr: float = 0.0

    def create_optimizer(self, model=None):
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.branch_from is not None:
            optimizer.load_state_dict(torch.load(self.branch_from / "optimizer.pt", weights_only=False))
            for group in optimizer.param_groups:  # the schedule starts from the branch's learning rate
                group["lr"] = group["initial_lr"] = self.branch_lr
        return optimizer


def cooldown(run_dir: Path, step: int, run_steps: int, length: int, spec: bench.RunSpec, corpus: str, threads: int):
    """Trains a branch off `run_dir/checkpoint-<step>` for `length` steps with `spec`'s SALT fields (its teacher and
    KD weight with kd_ratio 1: KD continued; no teacher: plain NLL); returns the branch's final (test, dev) loss."""
    torch.set_num_threads(threads)
    ckpt = run_dir / f"checkpoint-{step}"
    info, train_rows, evals = bench.load_corpus(corpus)
    extra = {k: v for k, v in spec.extra.items() if not k.startswith(("kd_auto", "kd_steps", "save_", "eval_"))}
    extra |= {
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": length,
        "data_seed": spec.seed + 1000,  # a fresh data order, the same for every branch
    }
    branch = dataclasses.replace(spec, steps=length, extra=extra)
    args = bench.recipe_args(branch, "cpu", run_dir.parent / f"{run_dir.name}_cd{step}_{spec.name}")
    trainer = BranchTrainer(
        model=AutoModelForCausalLM.from_pretrained(ckpt),
        teacher_model=str(bench.teacher_dir(corpus, spec.teacher)) if spec.teacher else None,
        args=args,
        train_dataset=train_rows,
    )
    trainer.branch_from, trainer.branch_lr = ckpt, cosine_lr(step, run_steps)
    trainer.train()
    out = trainer.evaluate(evals)
    return out["eval_test_loss"], out["eval_dev_loss"]
