"""Training speed-ups that stack with SALT, as pure functions: sequence-length warmup and layer-wise learning rates.

What transformers already does is used as it is and not repeated here: learning-rate schedules (`lr_scheduler_type`
"warmup_stable_decay", "cosine_with_min_lr", "linear" with `lr_scheduler_kwargs`) and optimizers (`optim`). This
module holds the two things none of transformers, Accelerate or DeepSpeed offers for a `Trainer`:

- Sequence-length warmup (Li et al., 2022, "The Stability-Efficiency Dilemma", https://arxiv.org/abs/2108.06084):
  the first optimizer steps train on short rows that grow to the full length. A packed block of T tokens becomes
  T / L rows of L tokens, so the tokens of an optimizer step, and with them the loss normalisation, do not change.
  The length is a function of the global step alone: identical on every process, exact under resume.
- Layer-wise learning rates (as in ELECTRA's layer-wise decay, Clark et al., 2020, https://arxiv.org/abs/2003.10555):
  the optimizer's parameter groups split by depth, each group's learning rate multiplied by `decay ** distance`.

Imports torch and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch

# ---- sequence-length warmup -----------------------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return sorted({d for i in range(1, math.isqrt(n) + 1) if n % i == 0 for d in (i, n // i)})


def _linear(step: int, warmup_steps: int, start_length: int, full_length: int) -> int:
    # 1) the target grows linearly from start_length at step 0 towards full_length at warmup_steps
    frac = step / warmup_steps
    assert 0.0 <= frac < 1.0
    target = start_length + (full_length - start_length) * frac
    # 2) the longest divisor of full_length not beyond the target: the block splits into whole rows
    return max(d for d in _divisors(full_length) if start_length <= d <= target)


def _doubling(step: int, warmup_steps: int, start_length: int, full_length: int) -> int:
    # 1) log2(full / start) equal stages, the length doubling from one to the next
    doublings = round(math.log2(full_length // start_length))
    frac = step / warmup_steps
    assert 0.0 <= frac < 1.0
    # 2) stage k of `doublings` trains on start * 2**k; full_length is reached at warmup_steps
    return start_length * 2 ** math.floor(frac * doublings)


SeqWarmupSchedule = Literal["linear", "doubling"]
SEQ_WARMUP_SCHEDULES: dict[str, Callable[[int, int, int, int], int]] = dict(
    zip(get_args(SeqWarmupSchedule), (_linear, _doubling), strict=True)
)


def check_seq_warmup(full_length: int, *, schedule: str, start_length: int) -> None:
    """Raises a `ValueError` naming the `SALTConfig` field when the warmup cannot split rows of `full_length`."""
    if schedule not in SEQ_WARMUP_SCHEDULES:
        raise ValueError(f"seq_warmup_schedule={schedule!r} must be one of {sorted(SEQ_WARMUP_SCHEDULES)}.")
    if not 1 <= start_length <= full_length or full_length % start_length:
        raise ValueError(
            f"seq_warmup_start_length={start_length} must divide the training rows' length {full_length} "
            f"(seq_length; the packed block is split into whole rows); divisors: {_divisors(full_length)}."
        )
    ratio = full_length // start_length
    if schedule == "doubling" and ratio & (ratio - 1):
        raise ValueError(
            f"seq_warmup_schedule='doubling' needs full length / seq_warmup_start_length to be a power of two, got "
            f"{full_length} / {start_length} = {ratio}: choose seq_warmup_start_length = {full_length} / 2**k, or "
            "seq_warmup_schedule='linear'."
        )


def seq_length_at(step: int, *, schedule: str, warmup_steps: int, start_length: int, full_length: int) -> int:
    """
    Row length of sequence-length warmup at an optimizer step; a divisor of `full_length`.

    Args:
        step (`int`):
            Optimizer steps already taken (`TrainerState.global_step`); the first step is 0.
        schedule (`str`):
            `"linear"`: the longest divisor of `full_length` not beyond `start + (full - start) * step / warmup_steps`.
            `"doubling"`: `start * 2**k`, k growing by one in each of log2(full / start) equal stages.
        warmup_steps (`int`):
            From this step on, rows have `full_length`. 0 turns the warmup off.
        start_length (`int`):
            Row length at step 0; divides `full_length` (by a power of two for `"doubling"`).
        full_length (`int`):
            Length T of the training rows (the packed block).

    Returns:
        `int`: L with `full_length % L == 0`, non-decreasing in `step`, `start_length` at step 0 (when warming up) and
        `full_length` from `warmup_steps` on.
    """
    if step < 0:
        raise ValueError(f"step={step} must be >= 0.")
    if warmup_steps < 0:
        raise ValueError(f"seq_warmup_steps={warmup_steps} must be >= 0.")
    if step >= warmup_steps:
        return full_length
    check_seq_warmup(full_length, schedule=schedule, start_length=start_length)
    return SEQ_WARMUP_SCHEDULES[schedule](step, warmup_steps, start_length, full_length)


def _restart_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """Position ids of rows cut out of longer rows: the part before a row's first document start restarts at 0."""
    before_first_start = torch.cumsum(position_ids == 0, dim=-1) == 0
    return torch.where(before_first_start, position_ids - position_ids[:, :1], position_ids)


def reshape_for_length(inputs: dict[str, Any], length: int) -> dict[str, Any]:
    """
    Splits every `[B, T]` tensor of a causal-LM batch into `[B * T / length, length]`, row b's pieces consecutive.

    Supervision: `labels` are shifted on the full rows first and returned as `shift_labels` (the target of each
    position, -100 where none). The last position of a piece therefore keeps its target, the first token of the next
    piece: every token of the block is a target exactly as often as before the split (what it loses is context, not
    supervision), so the global count of supervised tokens the Trainer computed on the full rows stays exact.
    `position_ids`, if present, restart at 0 in each piece (documents starting inside a piece keep their own restart);
    when absent the model numbers each piece from 0. `attention_mask` is split like the tokens.

    Args:
        inputs (`dict`):
            The batch: `input_ids` `[B, T]` and `labels` or `shift_labels` `[B, T]`, optionally `attention_mask` and
            `position_ids` `[B, T]`, other `[B, T, ...]` tensors (split alike) and non-tensor values (kept).
        length (`int`):
            Row length after the split; divides T.

    Returns:
        `dict`: a new batch; the input is returned unchanged when `length == T`.
    """
    key = "input_ids" if "input_ids" in inputs else "shift_labels" if "shift_labels" in inputs else "labels"
    batch, full = inputs[key].shape[:2]
    if length == full:
        return inputs
    if length < 1 or full % length:
        raise ValueError(f"length={length} must divide the rows' length {full}.")
    out = dict(inputs)
    if "shift_labels" not in out and "labels" in out:
        labels = out.pop("labels")
        out["shift_labels"] = torch.nn.functional.pad(labels[..., 1:], (0, 1), value=-100)
    for name, value in out.items():
        if not torch.is_tensor(value):
            continue
        if value.dim() < 2 or tuple(value.shape[:2]) != (batch, full):
            raise ValueError(
                f"Sequence-length warmup splits [batch, length] tensors; {name!r} has shape {tuple(value.shape)}, not "
                f"({batch}, {full}, ...)."
            )
        out[name] = value.reshape(batch * (full // length), length, *value.shape[2:])
    if "position_ids" in out:
        out["position_ids"] = _restart_positions(out["position_ids"])
    return out


# ---- layer-wise learning rates --------------------------------------------------------------------------------------

LayerwiseDirection = Literal["top_down", "bottom_up"]
LAYERWISE_DIRECTIONS: tuple[str, ...] = get_args(LayerwiseDirection)


def _layer_stack(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The model's stack of blocks: the `ModuleList` holding the most parameters (the outermost one on a tie)."""
    best, best_count = None, 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList):
            # counted in tensors, not elements: under ZeRO-3 a partitioned parameter has numel 0 on this process
            count = sum(1 for _ in module.parameters())
            if count > best_count:
                best, best_count = (name, module), count
    if best is None:
        raise ValueError(
            f"layerwise_lr_decay needs the model's stack of layers (a torch.nn.ModuleList); {type(model).__name__} "
            "has none."
        )
    return best


def layer_depths(model: torch.nn.Module) -> tuple[dict[str, int], int]:
    """
    Depth of every parameter: 0 before the stack of layers (embeddings), i + 1 in layer i, N + 1 after it (final norm,
    output head), N being the number of layers. A tied output head is the embedding matrix: depth 0.

    Returns:
        `tuple[dict[str, int], int]`: parameter name (as `model.named_parameters()` gives it) to depth, and N + 1,
        the top depth.
    """
    stack_name, stack = _layer_stack(model)
    prefix = f"{stack_name}." if stack_name else ""
    depths: dict[str, int] = {}
    past_stack = False
    for name, _ in model.named_parameters():
        if name.startswith(prefix):
            depths[name] = int(name[len(prefix) :].split(".", 1)[0]) + 1
            past_stack = True
        else:
            depths[name] = len(stack) + 1 if past_stack else 0
    return depths, len(stack) + 1


def layerwise_lr_multiplier(depth: int, top_depth: int, *, decay: float, direction: str) -> float:
    """`decay ** (top_depth - depth)` for `"top_down"` (the head keeps the base rate), `decay ** depth` for
    `"bottom_up"` (the embeddings keep it)."""
    if direction not in LAYERWISE_DIRECTIONS:
        raise ValueError(f"layerwise_lr_direction={direction!r} must be one of {list(LAYERWISE_DIRECTIONS)}.")
    assert 0 <= depth <= top_depth
    return decay ** (top_depth - depth if direction == "top_down" else depth)


def layerwise_param_groups(
    param_groups: list[dict[str, Any]], model: torch.nn.Module, *, decay: float, direction: str
) -> list[dict[str, Any]]:
    """
    Splits an optimizer's parameter groups by depth (see [`layer_depths`]) and multiplies each new group's `lr` by
    [`layerwise_lr_multiplier`]; every other setting of a group (weight decay, betas, optimizer-specific keys) is
    kept. Each new group records its `layer_depth` and `lr_multiplier`.

    The groups are ordered by decreasing multiplier (then by original group), so the first group runs at the base
    rate: the Trainer logs the first group's learning rate.

    Args:
        param_groups (`list[dict]`):
            Groups of an optimizer that has not stepped yet (e.g. the Trainer's decay / no-decay groups).
        model (`torch.nn.Module`):
            The model whose parameters the groups hold.
        decay (`float`):
            Multiplier per layer of distance, in (0, 1].
        direction (`str`):
            `"top_down"`: the output head at the base rate, each layer below it `decay` times the one above.
            `"bottom_up"`: the reverse, the embeddings at the base rate.

    Returns:
        `list[dict]`: the new groups, holding every parameter of `param_groups` exactly once.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layerwise_lr_decay={decay} must be in (0, 1].")
    depths, top = layer_depths(model)
    depth_of = {id(p): depths[n] for n, p in model.named_parameters()}
    new_groups = []
    for index, group in enumerate(param_groups):
        names = group.get("param_names")
        by_depth: dict[int, list[int]] = {}
        for i, p in enumerate(group["params"]):
            if id(p) not in depth_of:
                raise ValueError("layerwise_lr_decay: the optimizer holds a parameter that is not the model's.")
            by_depth.setdefault(depth_of[id(p)], []).append(i)
        for depth, members in by_depth.items():
            mult = layerwise_lr_multiplier(depth, top, decay=decay, direction=direction)
            new = {**group, "params": [group["params"][i] for i in members], "lr": group["lr"] * mult}
            if names is not None:
                new["param_names"] = [names[i] for i in members]
            new["layer_depth"], new["lr_multiplier"] = depth, mult
            new_groups.append((-mult, index, depth, new))
    return [group for *_, group in sorted(new_groups, key=lambda item: item[:3])]


# ---- the two speed-ups applied by the run's SALTConfig (what SALTTrainer calls) -------------------------------------


def warmup_inputs(inputs: dict[str, Any], step: int, args) -> dict[str, Any]:
    """
    The batch of optimizer step `step` under `args`' sequence-length warmup (`seq_warmup_*` fields of a SALTConfig):
    rows split before the student's and the teacher's forward, so both see the same rows; the supervised tokens,
    and with them `num_items_in_batch`, are kept.
    """
    if args.seq_warmup_steps <= 0:
        return inputs
    length = seq_length_at(
        step,
        schedule=args.seq_warmup_schedule,
        warmup_steps=args.seq_warmup_steps,
        start_length=args.seq_warmup_start_length,
        full_length=inputs["input_ids"].shape[1],
    )
    return reshape_for_length(inputs, length)


def regroup_by_layer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, args) -> None:
    """Replaces a fresh optimizer's groups by `layerwise_param_groups` of `args.layerwise_lr_decay` (< 1)."""
    groups = layerwise_param_groups(
        optimizer.param_groups, model, decay=args.layerwise_lr_decay, direction=args.layerwise_lr_direction
    )
    # No step has run: no optimizer state refers to the old groups. add_param_group fills in the defaults.
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)
