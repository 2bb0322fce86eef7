"""The fused SALT loss on the stacks GPU users run, in one call on one GPU (issue 22).

    python benchmarks/gpu_check/gpu_check.py --device cuda   # one H100/H200, < 10 min -> results/gpu_check.json
    python benchmarks/gpu_check/gpu_check.py --device cpu --small   # every part at toy sizes: the script works (CI)
    python benchmarks/gpu_check/gpu_check.py --device cpu --size medium --parts compile --threads 2  # compiled/eager
    python benchmarks/gpu_check/gpu_check.py --summarise-only --out results/gpu_check.json  # its tables, for REPORT.md

Parts (`--parts`, all by default, in this order; the JSON is rewritten after each, so a timeout keeps those done, and
`--parts <the rest> --append` runs the others into the same file):
  step     a SALT KD step (w 0.5) on the fused path and on the logits path: one SGD step equal in fp32 (1e-5) and
           under bf16 autocast (BF16_REL), and against a plain Trainer step as a control; then, in bf16 with AdamW,
           step time and CUDA peak memory of each against a plain `Trainer` step plus the teacher's forward
  losses   the fused loss against TRL's `_chunked_divergence_loss` (Triton on GPU) and Liger's
           `LigerFusedLinearJSDLoss` on the same hidden states and output weights, forward KL: value, time, memory
  fsdp2    the Trainer-level FSDP2 run (`fsdp_config={"version": 2}`, torchrun with one process): the fused path kept
           and one SGD step equal to the unsharded one (1e-5)
  compile  `torch_compile=True` on the fused path against eager: the first update's difference, the frames Dynamo
           compiles after each step (none after the second), step times
  liger    `use_liger_kernel=True` (Liger's RMSNorm, SwiGLU, RoPE and forward on GPU; its forward alone on CPU, where
           it is installed): the fused path kept and one step equal to the step without Liger (BF16_REL)
A part whose package is missing (trl, liger-kernel) is "skipped" with the reason; the script exits 1 if a part fails.

Sizes (`--size`): "full" is a student shaped like SmolLM-360M and a teacher like SmolLM-135M (their config fields;
built from configs, nothing downloaded) at vocabularies 49,152 and 151,936, 8,192 tokens a step (4 x 2,048);
"medium" and "small" are CPU sizes.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402, F401  (puts every study folder on sys.path)
import torch  # noqa: E402
from bench import RESULTS, TOKEN_IDS, sync, write_json  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402

from salt_hf import SALTConfig, SALTTrainer  # noqa: E402
from salt_hf.losses import fused_linear_salt_loss  # noqa: E402

# In order of what matters most (a call that runs out of time keeps the parts done); liger last: Liger patches
# transformers' Llama module for the rest of the process.
PARTS = ("step", "losses", "fsdp2", "compile", "liger")
# One SGD step at lr 0.5, no clipping: theta - lr * g. fp32: the paths sum the same terms in other orders, a few ulps
# of lr * g and one rounding of theta (tests/test_fused_head.py): 1e-5 absolute.
FP32_TOL = 1e-5
# bf16 autocast: both paths run the output layer's matmuls in bf16 (8 significant bits, unit roundoff u = 2^-9) and
# round the logits' gradient to bf16 at different points (per chunk from fp32, or the whole tensor in autograd), so
# single elements of a gradient differ by a rounding or two (2u) and the backward through the layers' bf16 matmuls
# mixes such differences into every weight's update. Bound on the update's relative difference, ||d1 - d2|| / ||d1||:
# 8u = 1.6e-2. A different objective is far outside it: the plain Trainer step (no KD term) is the control.
BF16_REL = 8 * 2.0**-9
MODES = ("eager", "compiled")  # part "compile"
SUPERVISED = (1.0, 0.15, 0.7, 0.03)  # fractions of each row's labels kept: unequal supervised lengths
TEACHER_HEAD_SCALE = 10.0  # peaked teacher distributions, far from the student's: KD far above rounding


@dataclass
class Sizes:
    student: dict
    teacher: dict
    vocabs: tuple[int, ...]
    rows: int
    seq: int
    steps: int  # timed steps per variant, after two warm-up steps


SIZES = {
    "full": Sizes(
        # SmolLM-360M's and SmolLM-135M's fields
        dict(
            hidden_size=960,
            intermediate_size=2560,
            num_hidden_layers=32,
            num_attention_heads=15,
            num_key_value_heads=5,
        ),
        dict(
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3
        ),
        vocabs=(49152, 151936),
        rows=4,
        seq=2048,
        steps=5,
    ),
    "medium": Sizes(
        dict(
            hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
        ),
        dict(
            hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
        ),
        vocabs=(8192,),
        rows=4,
        seq=128,
        steps=5,
    ),
    "small": Sizes(
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1),
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1),
        vocabs=(512,),
        rows=2,
        seq=32,
        steps=2,
    ),
}


@dataclass
class Check:
    """One part's outcome: `status` is "pass", "fail" or "skipped"; `figures` what it measured."""

    status: str = "pass"
    reason: str | None = None
    figures: dict = field(default_factory=dict)

    def require(self, ok: bool, what: str) -> None:
        if not ok:
            self.status, self.reason = "fail", "; ".join(filter(None, [self.reason, what]))


# ---- models, trainers, one step ------------------------------------------------------------------------------------


def llama(fields: dict, vocab: int, seq: int, seed: int, device: str, head_scale: float = 1.0) -> LlamaForCausalLM:
    """A new tied Llama of `fields`, initialised on `device` (seconds, where a 360M model takes many on the CPU)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=seq, tie_word_embeddings=True, **vars(TOKEN_IDS))
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**{**config.to_dict(), **fields}))
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)  # tied: the input embedding too (the first RMSNorm undoes it)
    return model


def trainer_args(cli, sizes: Sizes, dtype: str, optim: str, **kw) -> dict:
    lr = 0.5 if optim == "sgd" else 1e-4
    return dict(
        output_dir=str(Path(cli.work) / "run"),
        report_to="none",
        use_cpu=cli.device == "cpu",
        bf16=dtype == "bf16",
        per_device_train_batch_size=sizes.rows,
        max_steps=10**6,
        optim=optim,
        learning_rate=lr,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        disable_tqdm=True,
        **kw,
    )


def build(cli, sizes: Sizes, vocab: int, kind: str, dtype: str, optim: str = "sgd", **salt) -> Trainer:
    """`kind` "plain" (a `Trainer`), or "logits" / "fused" (a SALTTrainer in the KD stage), ready to step."""
    student = llama(sizes.student, vocab, sizes.seq, 0, cli.device)
    if kind == "plain":
        trainer = Trainer(model=student, args=TrainingArguments(**trainer_args(cli, sizes, dtype, optim)))
    else:
        implementation = {"logits": "logits", "fused": "fused_linear"}[kind]
        kw = dict(kd_weight=0.5, kd_steps=10**6, loss_implementation=implementation, **salt)
        args = SALTConfig(**trainer_args(cli, sizes, dtype, optim, **kw))
        teacher = llama(sizes.teacher, vocab, sizes.seq, 1, cli.device, TEACHER_HEAD_SCALE)
        trainer = SALTTrainer(model=student, teacher_model=teacher, args=args)
    if trainer.args.use_liger_kernel:  # what train() does first
        from transformers.integrations.liger import apply_liger_kernel

        apply_liger_kernel(trainer.model, trainer.args.liger_kernel_config)
    # prepare() places the model, wraps its forward in autocast for bf16 and compiles it for torch_compile=True
    trainer.model = trainer.accelerator.prepare(trainer.model.to(trainer.args.device))
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    if isinstance(trainer, SALTTrainer):
        trainer.resolve_kd_steps(10**6)
        trainer.place_teacher()
    return trainer


def batch(sizes: Sizes, vocab: int, device) -> dict:
    ids = torch.randint(0, vocab, (sizes.rows, sizes.seq), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    for row in range(sizes.rows):
        labels[row, max(2, int(SUPERVISED[row % len(SUPERVISED)] * sizes.seq)) :] = -100
    return {"input_ids": ids.to(device), "labels": labels.to(device)}


def step(trainer: Trainer, inputs: dict) -> None:
    """One optimizer step as `Trainer.train` takes it (`training_step`, then the optimizer)."""
    n = (inputs["labels"][:, 1:] != -100).sum()
    trainer.training_step(trainer.model, inputs, n)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def weights(trainer: Trainer) -> torch.Tensor:
    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()]).cpu()


def free(trainer: Trainer) -> None:
    """Drops what holds a trainer's memory (its models, optimizer, the references Accelerate and callbacks keep), so
    that the next trainer is built in free memory although the caller's name still points at this one."""
    if isinstance(trainer, SALTTrainer) and trainer.teacher is not None:
        trainer.teacher.release()
    trainer.accelerator.free_memory()
    handler = trainer.callback_handler
    handler.model = handler.optimizer = handler.lr_scheduler = None
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def update_difference(start: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> dict:
    """How two one-step results differ: max |a - b| and the relative difference of the updates."""
    diff = a - b
    return {
        "max_abs_diff": diff.abs().max().item(),
        "update_rel_diff": (diff.norm() / (a - start).norm()).item(),
        "max_update": (a - start).abs().max().item(),
    }


def within(dtype: str, d: dict) -> bool:
    return d["max_abs_diff"] <= FP32_TOL if dtype == "fp32" else d["update_rel_diff"] <= BF16_REL


def timed(device: str, fn, steps: int) -> tuple[float, float | None]:
    """Median seconds of `fn` over `steps` calls after two warm-up calls, and its CUDA peak above the start (MiB)."""
    for _ in range(2):
        fn()
    peak = None
    if device == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return statistics.median(times), peak


# ---- part "step": the fused path and the logits path ----------------------------------------------------------------


def one_step_equality(cli, sizes: Sizes, vocab: int, dtype: str, check: Check) -> dict:
    results, logged = {}, {}
    for kind in ("logits", "fused", "plain"):
        trainer = build(cli, sizes, vocab, kind, dtype)
        inputs = batch(sizes, vocab, trainer.args.device)
        start = weights(trainer)
        step(trainer, inputs)
        results[kind] = weights(trainer)
        if kind != "plain":
            logged[kind] = trainer.fused_head.implementation
            expected = "fused_linear" if kind == "fused" else "logits"
            check.require(logged[kind] == expected, f"{kind}: ran {logged[kind]} ({trainer.fused_head.reason})")
        free(trainer)
    same = update_difference(start, results["logits"], results["fused"])
    control = update_difference(start, results["logits"], results["plain"])
    check.require(within(dtype, same), f"vocab {vocab} {dtype}: fused vs logits {same}")
    # the control (no KD term) must be far outside the tolerance, or the comparison shows nothing
    check.require(control["update_rel_diff"] > 10 * BF16_REL, f"vocab {vocab} {dtype}: control too close {control}")
    return {"fused_vs_logits": same, "control_plain_vs_logits": control}


def step_costs(cli, sizes: Sizes, vocab: int) -> dict:
    """bf16 on GPU (fp32 on CPU) with AdamW: each trainer built, warmed and timed alone (memory: one at a time)."""
    dtype = "bf16" if cli.device == "cuda" else "fp32"
    out = {}
    for kind in ("plain", "logits", "fused"):
        trainer = build(cli, sizes, vocab, kind, dtype, optim="adamw_torch")
        inputs = batch(sizes, vocab, trainer.args.device)
        out[f"{kind}_step_s"], out[f"{kind}_peak_mib"] = timed(
            cli.device, lambda t=trainer, x=inputs: step(t, x), sizes.steps
        )
        if kind == "logits":  # the teacher's forward alone, as the KD step runs it

            def forward(t=trainer, ids=inputs["input_ids"]):
                with torch.no_grad(), t.accelerator.autocast():
                    return t.teacher_model(input_ids=ids).logits

            out["teacher_forward_s"], out["teacher_forward_peak_mib"] = timed(cli.device, forward, sizes.steps)
        free(trainer)
    base = out["plain_step_s"] + out["teacher_forward_s"]
    out["logits_over_plain_plus_teacher"] = out["logits_step_s"] / base
    out["fused_over_plain_plus_teacher"] = out["fused_step_s"] / base
    if out["plain_peak_mib"] is not None:
        out["logits_peak_over_plain"] = out["logits_peak_mib"] / out["plain_peak_mib"]
        out["fused_peak_over_plain"] = out["fused_peak_mib"] / out["plain_peak_mib"]
    return {"dtype": dtype, **out}


def part_step(cli, sizes: Sizes) -> Check:
    check = Check()
    dtypes = ("fp32", "bf16") if cli.device == "cuda" else ("fp32",)  # bf16 autocast on CPU: slow, and no GPU kernels
    for vocab in sizes.vocabs:
        figures = {dtype: one_step_equality(cli, sizes, vocab, dtype, check) for dtype in dtypes}
        figures["cost"] = step_costs(cli, sizes, vocab)
        check.figures[str(vocab)] = figures
    return check


# ---- part "losses": the fused loss against TRL's and Liger's on the same hidden states ------------------------------


def loss_inputs(sizes: Sizes, vocab: int, device: str):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    n, hs, ht = sizes.rows * sizes.seq, sizes.student["hidden_size"], sizes.teacher["hidden_size"]

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype)

    student = (randn(n, hs), randn(vocab, hs, scale=hs**-0.5))
    teacher = (randn(n, ht), randn(vocab, ht, scale=TEACHER_HEAD_SCALE * ht**-0.5))
    labels = torch.randint(0, vocab, (n,), generator=g).to(device)
    return student, teacher, labels


def kd_implementations(device: str) -> dict:
    """Forward KL(teacher || student), mean over tokens, from (hidden, weight) of both models: ours and the peers'."""

    def ours(s_h, s_w, t_h, t_w, labels):
        return fused_linear_salt_loss(s_h, s_w, labels, t_h, t_w, nll_weight=0.0, kd_weight=1.0).loss / len(labels)

    found = {"salt_hf": ours}
    try:
        from trl.trainer.distillation_trainer import _chunked_divergence_loss

        def trl(s_h, s_w, t_h, t_w, labels):
            mask = torch.ones(1, len(labels), device=s_h.device)
            return _chunked_divergence_loss(s_h[None], t_h[None], s_w, t_w, mask, beta=0.0)[0]

        found["trl"] = trl
    except ImportError as err:
        found["trl"] = f"skipped: {err}"
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        # beta 0 is the forward KL in Liger's generalized JSD; compiled (its default) where a GPU runs it
        liger_loss = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.0, compiled=device == "cuda"
        )
        found["liger"] = lambda s_h, s_w, t_h, t_w, labels: liger_loss(s_h, s_w, t_h, t_w, labels)
    except ImportError as err:
        found["liger"] = f"skipped: {err}"
    return found


def part_losses(cli, sizes: Sizes) -> Check:
    check = Check()
    for vocab in sizes.vocabs:
        (s_h, s_w), (t_h, t_w), labels = loss_inputs(sizes, vocab, cli.device)
        rows = {}
        for name, fn in kd_implementations(cli.device).items():
            if isinstance(fn, str):
                rows[name] = fn
                continue
            hidden, weight = s_h.clone().requires_grad_(), s_w.clone().requires_grad_()
            value = {}

            def fwd_bwd(fn=fn, hidden=hidden, weight=weight, value=value, teacher=(t_h, t_w), labels=labels):
                hidden.grad = weight.grad = None
                loss = fn(hidden, weight, *teacher, labels)
                loss.backward()
                value["loss"] = loss.item()

            try:  # a peer's failure is its row's, the others still run
                seconds, peak = timed(cli.device, fwd_bwd, sizes.steps)
            except Exception as err:
                rows[name] = f"failed: {type(err).__name__}: {str(err)[:500]}"
                check.require(False, f"{name} at vocab {vocab}: {rows[name]}")
                continue
            rows[name] = {"value": value["loss"], "fwd_bwd_s": seconds, "peak_mib": peak}
        ours = rows["salt_hf"]["value"]
        # On GPU the logits are bf16 matmuls, kept in fp32 by some packages' kernels and rounded to bf16 (unit roundoff
        # 2^-9, about 0.06 at the teacher's largest logits) by others before the fp32 softmax: the per-token KL moves
        # by such roundings times (p - q), which mostly cancel over 8k tokens. 2e-2 relative leaves room for that and
        # none for a different divergence (forward vs reverse KL differ by tens of percent here).
        tol = 2e-2 if cli.device == "cuda" else 1e-4
        for name, row in rows.items():
            if isinstance(row, dict):
                row["rel_diff_to_salt_hf"] = abs(row["value"] - ours) / abs(ours)
                check.require(row["rel_diff_to_salt_hf"] <= tol, f"{name} at vocab {vocab}: {row}")
        check.figures[str(vocab)] = rows
    return check


# ---- part "compile": torch_compile=True on the fused path against eager --------------------------------------------


def part_compile(cli, sizes: Sizes) -> Check:
    """The eager and the compiled trainer step in turn (drift hits both alike); SGD, so the first updates compare."""
    check, vocab = Check(), sizes.vocabs[0]
    dtype = "bf16" if cli.device == "cuda" else "fp32"
    torch._dynamo.reset()
    counters.clear()
    trainers = {name: build(cli, sizes, vocab, "fused", dtype, torch_compile=name == "compiled") for name in MODES}
    inputs = batch(sizes, vocab, cli.device)
    start, first, times, frames = weights(trainers["eager"]), {}, {name: [] for name in MODES}, []
    for i in range(2 + sizes.steps):
        for name, trainer in trainers.items():
            sync(cli.device)
            t0 = time.perf_counter()
            step(trainer, inputs)
            sync(cli.device)
            times[name].append(time.perf_counter() - t0)
            first[name] = weights(trainer) if i == 0 else first[name]
        frames.append(counters["frames"]["ok"])
    compiled = trainers["compiled"]
    same = update_difference(start, first["eager"], first["compiled"])
    check.require(type(compiled.model).__name__ == "OptimizedModule", "the Trainer did not compile the model")
    check.require(compiled.fused_head.implementation == "fused_linear", f"fell back: {compiled.fused_head.reason}")
    check.require(frames[1] == frames[-1], f"recompiled after the second step: {frames}")
    check.require(within(dtype, same), f"compiled vs eager first update: {same}")
    step_s = {name: statistics.median(t[2:]) for name, t in times.items()}
    check.figures = {
        "vocab": vocab,
        "dtype": dtype,
        "first_update": same,
        "frames_after_each_step": frames,
        **{f"{name}_step_s": s for name, s in step_s.items()},
        "compiled_over_eager": step_s["compiled"] / step_s["eager"],
        "compile_first_step_s": times["compiled"][0],
    }
    for trainer in trainers.values():
        free(trainer)
    return check


# ---- part "fsdp2": the Trainer-level FSDP2 run, one process -------------------------------------------------------


def fsdp2_child(cli, sizes: Sizes) -> None:
    """Under torchrun: one SGD step of SALTTrainer with FSDP2 through `train()`; rank 0 writes what it saw."""
    from datasets import Dataset
    from torch.distributed.tensor import DTensor

    vocab = sizes.vocabs[0]
    inputs = batch(sizes, vocab, "cpu")
    rows = [{k: v[i].tolist() for k, v in inputs.items()} for i in range(sizes.rows)]
    fsdp = dict(fsdp="full_shard", fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]})
    kw = dict(kd_weight=0.5, kd_steps=1, loss_implementation="fused_linear", **fsdp, seed=0, save_strategy="no")
    args = SALTConfig(**{**trainer_args(cli, sizes, "fp32", "sgd", **kw), "max_steps": 1})
    teacher = llama(sizes.teacher, vocab, sizes.seq, 1, cli.device, TEACHER_HEAD_SCALE)
    student = llama(sizes.student, vocab, sizes.seq, 0, cli.device)
    trainer = SALTTrainer(model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows))
    implementation_at_init = trainer.fused_head.implementation
    trainer.train()
    params = list(trainer.model.parameters())
    full = torch.cat([(p.full_tensor() if isinstance(p, DTensor) else p).detach().float().reshape(-1) for p in params])
    if trainer.accelerator.is_main_process:
        record = {
            "weights": full.cpu(),
            "fsdp_enabled": trainer.is_fsdp_enabled,
            "fsdp_version": trainer.accelerator.state.fsdp_plugin.fsdp_version if trainer.is_fsdp_enabled else None,
            "sharded": any(isinstance(p, DTensor) for p in params),
            "implementation_at_init": implementation_at_init,
            "implementation": trainer.fused_head.implementation,
            "reason": trainer.fused_head.reason,
        }
        torch.save(record, Path(cli.work) / "fsdp2.pt")


def part_fsdp2(cli, sizes: Sizes) -> Check:
    check = Check()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", __file__]
    cmd += ["--_fsdp2_child", "--device", cli.device, "--size", cli.size, "--work", cli.work]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        check.require(False, f"the FSDP2 run failed: {done.stderr[-3000:]}")
        return check
    seen = torch.load(Path(cli.work) / "fsdp2.pt")
    # the unsharded reference: the same step in this process, without FSDP
    vocab = sizes.vocabs[0]
    trainer = build(cli, sizes, vocab, "fused", "fp32")
    start = weights(trainer)
    step(trainer, batch(sizes, vocab, trainer.args.device))
    same = update_difference(start, weights(trainer), seen.pop("weights"))
    free(trainer)
    check.figures = {"vocab": vocab, **seen, "vs_unsharded": same}
    check.require(within("fp32", same), f"FSDP2 step vs unsharded: {same}")
    check.require(seen["implementation_at_init"] == seen["implementation"] == "fused_linear", f"fell back: {seen}")
    if cli.device == "cpu" and check.status == "pass":  # FSDP through Accelerate on CPU runs as DDP
        check.status, check.reason = "skipped", "CPU: the Trainer ran without FSDP (the launch and the step did run)"
    else:
        check.require(seen["fsdp_enabled"] and seen["fsdp_version"] == 2 and seen["sharded"], f"not FSDP2: {seen}")
    return check


# ---- part "liger": use_liger_kernel=True ----------------------------------------------------------------------------


def part_liger(cli, sizes: Sizes) -> Check:
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError as err:
        return Check("skipped", f"liger-kernel not importable: {err}")
    check, vocab = Check(), sizes.vocabs[0]
    dtype = "bf16" if cli.device == "cuda" else "fp32"
    # on CPU only Liger's forward runs (its kernels are Triton: GPU only)
    config = None if cli.device == "cuda" else {"rope": False, "rms_norm": False, "swiglu": False}
    runs, first = {}, {}
    for liger in (False, True):  # without Liger first: applying it patches transformers' Llama module for good
        kw = dict(use_liger_kernel=True, liger_kernel_config=config) if liger else {}
        trainer = build(cli, sizes, vocab, "fused", dtype, **kw)
        inputs = batch(sizes, vocab, trainer.args.device)
        start = weights(trainer)
        step(trainer, inputs)
        first[liger] = weights(trainer)
        seconds, peak = timed(cli.device, lambda t=trainer, x=inputs: step(t, x), sizes.steps)
        runs["liger" if liger else "plain"] = {
            "implementation": trainer.fused_head.implementation,
            "forward": trainer.accelerator.unwrap_model(trainer.model).forward.__func__.__module__,
            "step_s": seconds,
            "peak_mib": peak,
        }
        free(trainer)
    same = update_difference(start, first[False], first[True])
    check.figures = {"vocab": vocab, "dtype": dtype, "liger_kernel_config": config, "first_update": same, **runs}
    check.require(runs["liger"]["forward"].startswith("liger_kernel"), f"Liger's forward did not run: {runs}")
    check.require(runs["liger"]["implementation"] == "fused_linear", f"fell back: {runs}")
    check.require(within(dtype, same), f"with vs without Liger, first update: {same}")
    return check


PART_CHECKS = {
    "step": part_step,
    "losses": part_losses,
    "compile": part_compile,
    "fsdp2": part_fsdp2,
    "liger": part_liger,
}


# ---- driver --------------------------------------------------------------------------------------------------------


def environment(cli) -> dict:
    env = {"device": cli.device, "size": cli.size, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if cli.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    for package in ("transformers", "accelerate", "trl", "liger-kernel", "triton"):
        try:
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            env[package] = None
    return env


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)


def step_table(figures: dict) -> None:
    columns = ["vocab", "fp32: fused vs logits max abs", "bf16: update rel diff", "control rel", "plain s"]
    columns += ["teacher fwd s", "logits s", "fused s", "logits / (plain + teacher)", "fused / (plain + teacher)"]
    columns += ["peak MiB plain / logits / fused"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for vocab, f in figures.items():
        c, bf16 = f["cost"], f.get("bf16", {}).get("fused_vs_logits", {})
        peaks = " / ".join(fmt(c[f"{k}_peak_mib"]) for k in ("plain", "logits", "fused"))
        cells = [f["fp32"]["fused_vs_logits"]["max_abs_diff"], bf16.get("update_rel_diff")]
        cells += [f["fp32"]["control_plain_vs_logits"]["update_rel_diff"], c["plain_step_s"], c["teacher_forward_s"]]
        cells += [c["logits_step_s"], c["fused_step_s"], c["logits_over_plain_plus_teacher"]]
        cells += [c["fused_over_plain_plus_teacher"], peaks]
        print(f"| {vocab} | " + " | ".join(fmt(x) for x in cells) + " |")


def losses_table(figures: dict) -> None:
    print("| vocab | loss | value | fwd+bwd s | peak MiB | rel diff to salt_hf |\n|---|---|---|---|---|---|")
    for vocab, rows in figures.items():
        for name, r in rows.items():
            cells = (
                [r] if isinstance(r, str) else [r["value"], r["fwd_bwd_s"], r["peak_mib"], r["rel_diff_to_salt_hf"]]
            )
            print(f"| {vocab} | {name} | " + " | ".join(fmt(x) for x in cells) + " |")


def print_tables(report: dict) -> None:
    """Markdown tables of a stored report, for REPORT.md; the other parts' figures as JSON."""
    print(f"environment: {json.dumps(report['environment'])}")
    for name, part in report["parts"].items():
        print(f"\n{name}: {part['status']}" + (f" ({part['reason'][:300]})" if part["reason"] else ""))
        tables = {"step": step_table, "losses": losses_table}
        if name in tables and part["status"] != "fail":
            tables[name](part["figures"])
        else:
            print(json.dumps(part["figures"])[:3000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", default=None, choices=list(SIZES), help="default: full on cuda, small on cpu")
    parser.add_argument("--small", action="store_true", help="--size small")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: the size's)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--out", default=None, help="default: results/gpu_check.json (cuda), results/gpu_check_cpu.json"
    )
    parser.add_argument("--work", default="/tmp/salt_gpu_check", help="run folders and the FSDP2 run's weights")
    parser.add_argument("--summarise-only", action="store_true", help="run nothing: print the tables of --out")
    parser.add_argument("--append", action="store_true", help="keep the parts --out holds that this call does not run")
    parser.add_argument("--_fsdp2_child", action="store_true", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    cli.size = "small" if cli.small else cli.size or ("full" if cli.device == "cuda" else "small")
    out = Path(cli.out or RESULTS / ("gpu_check.json" if cli.device == "cuda" else "gpu_check_cpu.json"))
    if cli.threads:
        torch.set_num_threads(cli.threads)
    if cli.summarise_only:
        return print_tables(json.loads(out.read_text()))
    sizes = SIZES[cli.size] if cli.steps is None else replace(SIZES[cli.size], steps=cli.steps)
    if cli._fsdp2_child:
        return fsdp2_child(cli, sizes)
    report = {"environment": environment(cli), "sizes": asdict(sizes), "parts": {}}
    if cli.append and out.exists():  # e.g. the parts a first call had no time for, run by a second one
        report["parts"] = json.loads(out.read_text())["parts"]
    for name in cli.parts.split(","):
        t0 = time.perf_counter()
        try:
            check = PART_CHECKS[name](cli, sizes)
        except Exception:  # the next parts still run: one call on the GPU machine should bring back all it can
            check = Check("fail", traceback.format_exc()[-3000:])
        report["parts"][name] = {**asdict(check), "wall_s": time.perf_counter() - t0}
        write_json(out, report, indent=1)
        print(
            f"{name}: {check.status} ({time.perf_counter() - t0:.0f} s){': ' + check.reason if check.reason else ''}"
        )
    failed = [name for name, part in report["parts"].items() if part["status"] == "fail"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
