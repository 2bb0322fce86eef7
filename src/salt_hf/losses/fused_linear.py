"""SALT's loss from hidden states and output weights (fused linear): no [tokens x vocab] tensor is ever held.

`fused_linear_salt_loss` receives what goes INTO each model's output layer (the last hidden states, the output weight
[V, H] of an `nn.Linear` or a tied embedding, an optional bias) instead of the logits it produces. The model's logits
are

    z = scale * (hidden @ weight.T + bias),   then, with soft-capping,   z = softcap * tanh(z / softcap)

(`softcap` is Gemma 2/3's `final_logit_softcapping`, `scale` Cohere's `logit_scale`). On these logits it returns
what `salt_loss` returns on the materialised logits, to fp32 rounding (issue 15): token SUMS over supervised tokens of
`nll_weight * NLL + kd_weight * KD` with the NLL, KD and teacher-NLL sums beside it, every divergence and temperature,
padded vocabularies through `vocab_size`, the teacher as a constant. The per-chunk value and gradient are computed by
the same chunk paths as `salt_loss` (`salt_hf.losses.chunks`), so the two cannot drift apart.

Memory: the loss walks over the tokens in chunks. For each chunk it computes the student's logits (the matmul in the
compute dtype, as the model's own output layer runs it, then fp32) and, without autograd, the teacher's; the chunk
path writes the fp32 gradient with respect to the final logits into a [chunk, V] buffer, and the output layer's
backward is applied at once:

    grad_hidden[chunk] = g @ W        grad_W += g^T @ hidden[chunk]  (fp32 accumulator)        grad_b += sum_rows g

with g the gradient with respect to `hidden @ W.T + b`. Nothing of the chunk is kept: the extra memory is a few
[chunk, V] temporaries (2**22 elements each with the automatic chunk size, as in `salt_loss`) plus the gradients
themselves ([N, H] and [V, H]), whatever the number of tokens. The backward pass only scales the stored gradients.
The automatic chunk is `salt_loss`'s (16 MiB per [chunk, V] fp32 temporary) but at least 256 tokens: every chunk
reads the [V, H] weight twice and reads and writes its fp32 gradient once, and with fewer rows those passes over
memory, not the matmuls, set the step's time (at vocab 152k, 16 MiB is 27 rows; benchmarks/micro/REPORT.md).

Chain rule through the output layer's post-processing, from the gradient g_z with respect to the final logits z:
    softcap   z = c tanh(y / c):   dz/dy = 1 - tanh^2(y / c) = 1 - (z / c)^2   (read off z: no second tanh)
    scale     y = s x:             dy/dx = s
so g = s * (1 - (z / c)^2) * g_z, computed in place in fp32.

Compute dtype: the logits matmul runs in the dtype the model's layer would use: under autocast, the autocast dtype
(the hidden states and weight are cast to it, as autocast casts them); otherwise the common dtype of hidden states and
weight. Everything after the matmul is fp32 (scale and soft-cap included, where Hugging Face's Gemma applies them in
the model dtype); the gradients come back in the dtypes of their inputs, the weight's and bias's summed over chunks in
fp32 first.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .chunks import (
    LossOptions,
    SALTLossOutput,
    SparseTargets,
    check_inputs,
    check_sparse_targets,
    choose_path,
    nll_chunk,
    resolve_chunk_size,
)

_MIN_AUTO_ROWS = 256  # the automatic chunk's floor in tokens (module docstring)


class _Head(NamedTuple):
    """One model's output layer: weight [V, H] and bias [V] in the compute dtype, and the post-processing."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: float
    softcap: float | None


class _HeadSpec(NamedTuple):
    compute_dtype: torch.dtype
    scale: float
    softcap: float | None


class _Spec(NamedTuple):
    """The non-tensor inputs of the autograd Function."""

    loss: LossOptions
    student: _HeadSpec
    teacher: _HeadSpec | None


class _Grads(NamedTuple):
    """The student's gradients, filled chunk by chunk: hidden in its own dtype, weight and bias in fp32."""

    hidden: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None


# ---- one chunk: logits, the output layer's backward ----------------------------------------------------------------


def _head(weight: torch.Tensor, bias: torch.Tensor | None, spec: _HeadSpec) -> _Head:
    dtype = spec.compute_dtype
    # .to() is a no-op outside autocast; under it, one cast of the weight per call, as autocast itself makes
    return _Head(weight.to(dtype), None if bias is None else bias.to(dtype), spec.scale, spec.softcap)


def _logits(head: _Head, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 [rows, V] logits of one model from its hidden states (already in the compute dtype)."""
    z = F.linear(hidden, head.weight, head.bias).float()
    if head.scale != 1.0:
        z.mul_(head.scale)
    if head.softcap is not None:
        z.div_(head.softcap).tanh_().mul_(head.softcap)
    return z


def _through_head(grad: torch.Tensor, z: torch.Tensor, head: _Head) -> None:
    """d loss / d z -> d loss / d (hidden @ W.T + b), in place; consumes the final logits z."""
    if head.softcap is not None:
        grad.mul_(z.div_(head.softcap).square_().neg_().add_(1.0))  # 1 - tanh^2
    if head.scale != 1.0:
        grad.mul_(head.scale)


def _accumulate(grads: _Grads, grad: torch.Tensor, hidden: torch.Tensor, head: _Head, rows: slice) -> None:
    """The output layer's backward on one chunk; `grad` is fp32 [rows, V], `hidden` the chunk in the compute dtype."""
    g = grad if grad.dtype == head.weight.dtype else grad.to(head.weight.dtype)
    if grads.hidden is not None:
        if grads.hidden.dtype == g.dtype:
            torch.mm(g, head.weight, out=grads.hidden[rows])
        else:
            grads.hidden[rows] = g @ head.weight
    if grads.weight is not None:
        if g.dtype == grads.weight.dtype:
            grads.weight.addmm_(g.T, hidden)
        else:
            grads.weight.add_(g.T @ hidden)
    if grads.bias is not None:
        grads.bias.add_(grad.sum(0))


# ---- the chunk driver and its autograd Function --------------------------------------------------------------------


def _fused_linear_pass(
    student_hidden, student: _Head, teacher_hidden, teacher, labels, o: LossOptions, grads, targets
):
    """
    Walks over the tokens in chunks; returns the fp32 sums (nll, kd, teacher_nll) and fills `grads`. The teacher is
    its output layer and hidden states, or stored `targets` (`SparseTargets`), or neither.
    """
    n_tokens, vocab = labels.shape[0], student.weight.shape[0]
    need_grad = any(g is not None for g in grads)
    has_teacher = teacher is not None or targets is not None
    path = choose_path(o, has_teacher, vocab, need_grad, sparse=targets is not None)
    use_teacher = teacher is not None and path is not nll_chunk  # without a KD term the teacher is not looked at
    sums = [torch.zeros((), dtype=torch.float32, device=student_hidden.device) for _ in range(3)]
    # one fp32 buffer for the gradient w.r.t. a chunk's logits, reused by every chunk
    grad_buf = student_hidden.new_empty(min(o.chunk_size, n_tokens), vocab, dtype=torch.float32) if need_grad else None
    for start in range(0, n_tokens, o.chunk_size):
        rows = slice(start, min(start + o.chunk_size, n_tokens))
        hidden = student_hidden[rows].to(student.weight.dtype)
        z = _logits(student, hidden)
        t = _logits(teacher, teacher_hidden[rows].to(teacher.weight.dtype)) if use_teacher else None
        if targets is not None and path is not nll_chunk:
            t = targets.rows(rows)
        grad = None if grad_buf is None else grad_buf[: rows.stop - rows.start]
        for total, chunk_sum in zip(sums, path(z, t, labels[rows], grad, o), strict=True):
            total += chunk_sum
        del t  # the teacher's logits and log-probs are never kept beyond their chunk
        if grad is not None:
            _through_head(grad, z, student)
            _accumulate(grads, grad, hidden, student, rows)
    return sums


def _new_grads(hidden, weight, bias, needs: tuple[bool, ...]) -> _Grads:
    def fp32_zeros(x):
        return torch.zeros(x.shape, dtype=torch.float32, device=x.device)

    return _Grads(
        torch.empty_like(hidden) if needs[0] else None,
        fp32_zeros(weight) if needs[1] else None,
        fp32_zeros(bias) if bias is not None and needs[2] else None,
    )


class _FusedLinearSALTLoss(torch.autograd.Function):
    """Value and the gradients w.r.t. the student's hidden states, weight and bias in one chunked pass."""

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, labels, targets, spec: _Spec):
        grads = _new_grads(s_hidden, s_weight, s_bias, ctx.needs_input_grad[:3])
        student = _head(s_weight, s_bias, spec.student)
        teacher = None if t_hidden is None else _head(t_weight, t_bias, spec.teacher)
        # the compute dtypes are explicit: autocast must not turn the fp32 gradient matmuls into bf16 ones
        with torch.autocast(s_hidden.device.type, enabled=False):
            nll_sum, kd_sum, teacher_nll = _fused_linear_pass(
                s_hidden, student, t_hidden, teacher, labels, spec.loss, grads, targets
            )
        o = spec.loss
        loss = nll_sum * o.nll_weight
        if o.kd_weight != 0.0:
            loss = loss + kd_sum * o.kd_weight
        num_tokens = (labels != o.ignore_index).sum()
        ctx.mark_non_differentiable(nll_sum, kd_sum, num_tokens, teacher_nll)
        ctx.save_for_backward(*grads)
        ctx.dtypes = (s_hidden.dtype, s_weight.dtype, None if s_bias is None else s_bias.dtype)
        ctx.backward_done = False
        return loss, nll_sum, kd_sum, num_tokens, teacher_nll

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        if ctx.backward_done:
            raise RuntimeError(
                "The fused-linear SALT loss scales its stored gradients in place; it supports one backward."
            )
        ctx.backward_done = True
        # in place: these buffers are the gradients and nothing else holds them
        scaled = [
            None if g is None else g.mul_(grad_loss.to(g.dtype)).to(dtype)
            for g, dtype in zip(ctx.saved_tensors, ctx.dtypes, strict=True)
        ]
        # one gradient per input of forward: the student's three, then the teacher's, labels, targets and spec
        return *scaled, None, None, None, None, None, None


# ---- input checks --------------------------------------------------------------------------------------------------


def _check_layer(name: str, hidden, weight, bias, labels, scale: float, softcap: float | None) -> None:
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise ValueError(f"{name}_hidden ({hidden.dtype}) and {name}_weight ({weight.dtype}) must be floating point.")
    if weight.dim() != 2:
        raise ValueError(
            f"{name}_weight of shape {tuple(weight.shape)} must be [vocab, hidden] (an nn.Linear weight)."
        )
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(
            f"{name}_hidden of shape {tuple(hidden.shape)} does not align with labels of shape {tuple(labels.shape)}: "
            "expected hidden states [..., hidden] with labels [...]."
        )
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{name}_hidden has width {hidden.shape[-1]} but {name}_weight of shape {tuple(weight.shape)} expects "
            f"{weight.shape[1]}."
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}_bias of shape {tuple(bias.shape)} must be [{weight.shape[0]}] (one per vocab row).")
    if not math.isfinite(scale):
        raise ValueError(f"{name}_scale={scale} must be finite.")
    if softcap is not None and not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"{name}_softcap={softcap} must be a positive number (or None for no soft-capping).")


def _compute_dtype(name: str, hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the model's output layer would run its matmul in."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    if hidden.dtype != weight.dtype:
        raise ValueError(
            f"{name}_hidden is {hidden.dtype} but {name}_weight is {weight.dtype}: outside autocast the output layer "
            "needs one dtype; cast one of them."
        )
    return hidden.dtype


def _check_teacher(teacher_hidden, teacher_weight, teacher_bias, labels, scale, softcap) -> None:
    if (teacher_hidden is None) != (teacher_weight is None):
        raise ValueError("Give both teacher_hidden and teacher_weight, or neither (no KD term).")
    if teacher_hidden is not None:
        _check_layer("teacher", teacher_hidden, teacher_weight, teacher_bias, labels, scale, softcap)
    elif teacher_bias is not None or softcap is not None or scale != 1.0:
        raise ValueError("teacher_bias, teacher_softcap or teacher_scale given without teacher_hidden/teacher_weight.")


def _auto_chunk_size(chunk_size: int | None, vocab: int) -> int:
    """`salt_loss`'s chunk rule, with at least `_MIN_AUTO_ROWS` tokens when automatic."""
    resolved = resolve_chunk_size(chunk_size, vocab)
    return resolved if chunk_size is not None else max(resolved, _MIN_AUTO_ROWS)


def _logits_shape(labels: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor | None:
    """A meta tensor of the logits' shape (no memory), to run `salt_loss`'s own checks on the vocabularies."""
    return None if weight is None else torch.empty((*labels.shape, weight.shape[0]), device="meta")


# ---- public function -----------------------------------------------------------------------------------------------


def fused_linear_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """
    The fp32 logits that `fused_linear_salt_loss` computes for one chunk, for a few rows: the trainer compares them
    with the model's own forward (`salt_hf.losses.head`). Same compute dtype, matmul and post-processing as the loss.

    Args:
        hidden (`torch.Tensor` of shape `[rows, H]`), weight (`torch.Tensor` of shape `[V, H]`), bias (`torch.Tensor`
            of shape `[V]`, *optional*), scale (`float`, *optional*, defaults to `1.0`), softcap (`float`,
            *optional*):
            As the student's arguments of `fused_linear_salt_loss`.

    Returns:
        `torch.Tensor` of shape `[rows, V]`, fp32.
    """
    spec = _HeadSpec(_compute_dtype("student", hidden, weight), scale, softcap)
    with torch.autocast(hidden.device.type, enabled=False):
        return _logits(_head(weight, bias, spec), hidden.to(spec.compute_dtype))


def fused_linear_salt_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    labels: torch.Tensor,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    student_scale: float = 1.0,
    teacher_scale: float = 1.0,
    nll_weight: float = 1.0,
    kd_weight: float = 0.0,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    vocab_size: int | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    teacher_targets: SparseTargets | None = None,
) -> SALTLossOutput:
    """
    `salt_loss` on the logits `hidden @ weight.T + bias` (scaled, soft-capped) of both models, without forming them.

    Args:
        student_hidden (`torch.Tensor` of shape `[..., H_s]`):
            The student's last hidden states, aligned with `labels` (position t predicts `labels[t]`).
        student_weight (`torch.Tensor` of shape `[V_s, H_s]`):
            The student's output weight (`lm_head.weight`, or the tied input embedding).
        labels (`torch.Tensor` of shape `[...]`):
            Target token ids; `ignore_index` marks tokens that are not supervised.
        teacher_hidden (`torch.Tensor` of shape `[..., H_t]`, *optional*), teacher_weight (`torch.Tensor` of shape
            `[V_t, H_t]`, *optional*):
            The teacher's, for the same positions; both or neither. Treated as constants (no gradient flows to them).
        student_bias (`torch.Tensor` of shape `[V_s]`, *optional*), teacher_bias (`torch.Tensor` of shape `[V_t]`,
            *optional*):
            Output-layer biases.
        student_softcap (`float`, *optional*), teacher_softcap (`float`, *optional*):
            Final logit soft-capping c: logits become c * tanh(logits / c) (Gemma 2/3).
        student_scale (`float`, *optional*, defaults to `1.0`), teacher_scale (`float`, *optional*, defaults to `1.0`):
            Multiplies the logits before soft-capping (Cohere's `logit_scale`).
        nll_weight, kd_weight, divergence, temperature, beta, vocab_size, ignore_index:
            As in `salt_hf.losses.salt_loss`; `vocab_size` is the real vocabulary when the two weights have
            different numbers of rows.
        chunk_size (`int`, *optional*):
            Tokens per chunk; by default chosen so that one [chunk, max(V_s, V_t)] fp32 temporary takes 16 MiB, and
            at least 256 tokens.
        teacher_targets (`SparseTargets`, *optional*):
            The teacher as stored targets (`salt_hf.targets`) instead of its hidden states and weight, one row per
            label; forward KL only (see `salt_hf.losses.salt_loss`).

    Returns:
        `SALTLossOutput`, as `salt_loss`: `loss` (differentiable w.r.t. `student_hidden`, `student_weight` and
        `student_bias`), `nll`, `kd` and `teacher_nll` (fp32 token sums, detached) and `num_tokens`.
    """
    _check_layer("student", student_hidden, student_weight, student_bias, labels, student_scale, student_softcap)
    _check_teacher(teacher_hidden, teacher_weight, teacher_bias, labels, teacher_scale, teacher_softcap)
    if teacher_targets is not None:
        if teacher_hidden is not None:
            raise ValueError("Give teacher_hidden/teacher_weight or teacher_targets, not both.")
        v_s = student_weight.shape[0]
        if vocab_size is not None and not 0 < vocab_size <= v_s:
            raise ValueError(f"vocab_size={vocab_size} must be in [1, {v_s}] (the student's vocabulary).")
        check_sparse_targets(teacher_targets, labels.numel(), vocab_size or v_s, divergence, beta)
    kd_vocab = check_inputs(
        _logits_shape(labels, student_weight),
        _logits_shape(labels, teacher_weight),
        labels,
        vocab_size,
        divergence,
        temperature,
        beta,
    )
    if teacher_targets is not None:
        kd_vocab = vocab_size or kd_vocab
    widest = max(student_weight.shape[0], 0 if teacher_weight is None else teacher_weight.shape[0])
    options = LossOptions(
        nll_weight=float(nll_weight),
        kd_weight=float(kd_weight),
        divergence=divergence,
        temperature=float(temperature),
        beta=float(beta),
        vocab_size=kd_vocab,
        ignore_index=ignore_index,
        chunk_size=_auto_chunk_size(chunk_size, widest),
    )
    student = _HeadSpec(_compute_dtype("student", student_hidden, student_weight), student_scale, student_softcap)
    teacher = t_hidden = t_weight = t_bias = None
    if teacher_hidden is not None:
        teacher = _HeadSpec(_compute_dtype("teacher", teacher_hidden, teacher_weight), teacher_scale, teacher_softcap)
        t_hidden = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
        t_weight, t_bias = teacher_weight.detach(), None if teacher_bias is None else teacher_bias.detach()
    return SALTLossOutput(
        *_FusedLinearSALTLoss.apply(
            student_hidden.reshape(-1, student_hidden.shape[-1]),
            student_weight,
            student_bias,
            t_hidden,
            t_weight,
            t_bias,
            labels.reshape(-1),
            teacher_targets,
            _Spec(options, student, teacher),
        )
    )
