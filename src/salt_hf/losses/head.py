"""`loss_implementation`: SALT's loss on the models' logits, or fused into their output layers (issue 15).

With "fused_linear" the student is called as it always is (through its wrapper's forward, so DDP's and DeepSpeed's
hooks run and ZeRO-3 gathers the output weight inside the output layer's own forward), with that layer's `forward`
swapped for one that receives the last hidden states and returns `fused_linear_salt_loss` on them
(`salt_hf.losses.fused_linear`): neither model's [tokens x vocab] logits are formed. The teacher's last hidden states
come the same way, from its own output layer; a ZeRO-3-sharded teacher's output weight is gathered around the student's
forward. What the swapped layer hands back to the model as "logits" is a [..., 1] tensor of zeros that depends on the
loss, so that hooks on the layer's output (ZeRO-3 gathers the weight again before the layer's backward) still run.

A model qualifies when its output layer is a plain `torch.nn.Linear` (tied to the input embedding or not, with or
without a bias) and what its forward does to that layer's output is known: nothing (Llama, Qwen2, GPT-2), Gemma's
`final_logit_softcapping`, or the logit scales of `_LOGIT_SCALE`; and the student is not sharded by FSDP1 or compiled
to CUDA graphs. That is checked twice: from the modules when the trainer is built (a teacher given by its path: when
it is placed), and at each model's first fused batch, inside its real forward, by comparing the fused path's logits
with the model's own on a few positions (`Probe`), so that an architecture not foreseen here is never trained on
another objective. "auto" falls back to the logits path, with one log line saying why, when a check fails; an
explicit "fused_linear" raises on the first check and falls back on the second.

Under FSDP2 the swapped layer runs inside the root module's forward, where FSDP2 has unsharded the root's parameters
(the output weight among them) and from where it reduce-scatters their gradients. Under `torch_compile=True` the
swapped layer is outside the compiled graph (`SwappedForward`): the decoder runs compiled, the loss eagerly.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.logging import get_logger
from accelerate.utils import extract_model_from_parallel
from torch import nn

from ..schedules import loss_weights
from ..targets.stored import ROW_ID, StoredTeacher
from .chunks import SALTLossOutput
from .fused_linear import fused_linear_logits, fused_linear_salt_loss
from .logits import salt_loss

logger = get_logger(__name__)

# Positions (of the first sequence) on which the first step compares the fused path's logits with the model's own.
CHECK_POSITIONS = 8
# The largest |own - fused| allowed, in units of the compute dtype's eps times (1 + max |logit|): the two sides run the
# same matmul; a post-processing step in the model's dtype (Gemma's soft-cap in bf16) rounds by about one eps.
CHECK_EPS = 4.0
# The torch.compile modes that capture CUDA graphs (torch._inductor.list_mode_options).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# What transformers 5's causal LMs multiply their output layer's output by, by `model_type` (read in their modeling
# files); soft-capping is read from `final_logit_softcapping`, the field every model that soft-caps uses.
_LOGIT_SCALE: dict[str, Callable[[Any], float]] = {
    "cohere": lambda config: config.logit_scale,
    "cohere2": lambda config: config.logit_scale,
    "granite": lambda config: 1.0 / config.logits_scaling,
    "granitemoe": lambda config: 1.0 / config.logits_scaling,
    "granitemoeshared": lambda config: 1.0 / config.logits_scaling,
}


class NotFusableError(ValueError):
    """A model whose logits the fused path cannot compute; the message says why."""


@dataclass(frozen=True)
class OutputLayer:
    """
    A causal LM's output layer and what the model's forward does to its output: `logits = softcap(scale * layer(h))`.

    Args:
        module (`torch.nn.Linear`): the layer (`get_output_embeddings()`); its weight may be the tied input embedding.
        scale (`float`, *optional*, defaults to `1.0`): the logit scale.
        softcap (`float`, *optional*): the final-logit soft-cap, or None.
    """

    module: nn.Linear
    scale: float = 1.0
    softcap: float | None = None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The fused path's fp32 logits for a few rows of hidden states [rows, H]."""
        weight, bias = self.module.weight, self.module.bias
        return fused_linear_logits(hidden, weight, bias, scale=self.scale, softcap=self.softcap)


def output_layer(model: nn.Module, name: str = "model") -> OutputLayer:
    """
    The output layer of `model` (DDP, DeepSpeed and compile wrappers are looked through; a PEFT model forwards to its
    base model). Raises `NotFusableError`, naming the `name`d model and the reason, when the fused path cannot stand
    in for that layer.
    """
    model = extract_model_from_parallel(model)
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    head = get_output_embeddings() if callable(get_output_embeddings) else None
    if head is None:
        raise NotFusableError(f"the {name} ({type(model).__name__}) has no output layer (get_output_embeddings())")
    if not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward:
        raise NotFusableError(
            f"the {name}'s output layer is a {type(head).__module__}.{type(head).__qualname__}, not a plain "
            "torch.nn.Linear (LoRA or modules_to_save on the output layer, a quantised or a custom layer)"
        )
    if "forward" in vars(head):
        raise NotFusableError(f"the {name}'s output layer has its forward replaced already (accelerate's device_map?)")
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None else None
    softcap = getattr(text, "final_logit_softcapping", None)
    scale_of = _LOGIT_SCALE.get(getattr(text, "model_type", None))
    return OutputLayer(head, 1.0 if scale_of is None else float(scale_of(text)), softcap)


class SwappedForward:
    """
    What a swapped output layer's `forward` is: one object per layer for the life of the process, which calls the
    function the current block set (`target`). Outside `torch.compile`'s graph (`torch.compiler.disable`): a compiled
    model's graph breaks at the output layer, the fused loss runs eagerly between the decoder's graph and the rest,
    and the graph's guards on the layer's `forward` see the same object every step, so nothing is recompiled when the
    loss's arguments (labels, teacher, KD weight) change.
    """

    _by_layer: weakref.WeakKeyDictionary[nn.Module, SwappedForward] = weakref.WeakKeyDictionary()

    def __init__(self):
        self.target: Callable[..., Any] | None = None
        self.forward = torch.compiler.disable(self._call)

    def _call(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.target(hidden)

    @classmethod
    def of(cls, module: nn.Module) -> SwappedForward:
        if module not in cls._by_layer:
            cls._by_layer[module] = cls()
        return cls._by_layer[module]


@contextlib.contextmanager
def swapped_forward(module: nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """
    Runs the block with `forward` as `module`'s forward: an instance attribute (`SwappedForward`), so that calling the
    module still runs the hooks that DDP, FSDP2, DeepSpeed and accelerate registered on it. Restored however the block
    ends.
    """
    swapped = SwappedForward.of(module)
    previous = vars(module).get("forward")
    if swapped.target is not None:
        raise RuntimeError("the output layer's forward is swapped already (a nested fused forward on one layer)")
    swapped.target, module.forward = forward, swapped.forward
    try:
        yield
    finally:
        swapped.target = None
        if previous is None:
            del module.forward
        else:
            module.forward = previous


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype an output layer called on `hidden` here computes in (autocast's, else the hidden states')."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


# ---- the first step's check: the fused path's logits against the model's own, inside the real forward ---------------


class Probe:
    """
    The first step's check of one model. Called by the swapped output layer in place of the placeholder, it returns
    the real layer's output on the first `CHECK_POSITIONS` positions [1, P, V] as the model's "logits" and keeps the
    fused path's logits for the same hidden states; `verdict` then compares the model's own logits with them. So the
    check costs no extra forward and sees the forward exactly as training runs it (wrappers, autocast, dropout).

    Args:
        name (`str`): "student" or "teacher", for the reason.
        layer (`OutputLayer`): the model's output layer.
        labels_shape (`torch.Size`): the labels' shape, which the hidden states must have (but the width).
    """

    def __init__(self, name: str, layer: OutputLayer, labels_shape):
        self.name, self.layer, self.labels_shape = name, layer, tuple(labels_shape)
        self.shape = self.fused = self.dtype = None
        self.calls = 0

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.shape, self.dtype = tuple(hidden.shape[:-1]), _compute_dtype(hidden)
        probe = hidden.detach().reshape(-1, hidden.shape[-1])[:CHECK_POSITIONS]
        with torch.no_grad():
            self.fused = self.layer.logits(probe)
            return nn.Linear.forward(self.layer.module, probe).unsqueeze(0)

    def verdict(self, own: torch.Tensor) -> str | None:
        """None when the model's own logits equal the fused path's and every label had a position, else why not."""
        if self.calls != 1:
            return f"the {self.name}'s forward called its output layer {self.calls} times, not once"
        if self.shape != self.labels_shape:
            return (
                f"the {self.name}'s output layer received hidden states for positions {self.shape} where the labels "
                f"have {self.labels_shape} (does its forward call the output layer once, on every position?)"
            )
        own = own.detach().reshape(-1, own.shape[-1]).float()
        if own.shape != self.fused.shape:
            return (
                f"the {self.name}'s forward turns its output layer's {list(self.fused.shape)} into {list(own.shape)}"
            )
        err = (own - self.fused).abs().max().item()
        tol = CHECK_EPS * torch.finfo(self.dtype).eps * (1.0 + self.fused.abs().max().item())
        if err <= tol:  # also False for NaN
            return None
        return (
            f"the {self.name}'s own logits differ from the fused path's by up to {err:.3g} (at most {tol:.3g} "
            f"allowed) on its first {own.shape[0]} positions: its forward post-processes the output layer's output "
            "in a way salt_hf does not know"
        )


# ---- the fused path -------------------------------------------------------------------------------------------------


def teacher_hidden(
    teacher: nn.Module, layer: OutputLayer, inputs: dict[str, Any], probe: Probe | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The teacher's last hidden states for `inputs`, without a graph and without its logits, in the dtype its output
    layer would compute in here (under autocast, autocast's), so that the fused loss computes its logits as the layer
    would; and what the teacher returned as logits (the `probe`'s, when one is given).
    """
    seen = {}

    def forward(hidden):
        seen["hidden"] = hidden.to(_compute_dtype(hidden))
        return probe(hidden) if probe is not None else hidden.new_zeros(()).expand(*hidden.shape[:-1], 1)

    with torch.no_grad(), swapped_forward(layer.module, forward):
        outputs = teacher(**inputs)
    if "hidden" not in seen and probe is None:  # with a probe, its verdict says so
        raise RuntimeError("the teacher's forward did not call its output layer: use loss_implementation='logits'")
    return seen.get("hidden"), outputs.logits


def _gathered(layer: OutputLayer | None):
    """The teacher's output layer gathered whole on every process when ZeRO-3 shards it (a collective), else as is."""
    params = [] if layer is None else [p for p in layer.module.parameters(recurse=False) if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


def _teacher_kwargs(teacher: tuple[OutputLayer, torch.Tensor] | None) -> dict[str, Any]:
    if teacher is None:
        return {}
    layer, hidden = teacher
    weight, bias = layer.module.weight, layer.module.bias
    return dict(
        teacher_hidden=hidden,
        teacher_weight=weight.to(hidden.dtype),
        teacher_bias=None if bias is None else bias.to(hidden.dtype),
        teacher_scale=layer.scale,
        teacher_softcap=layer.softcap,
    )


def fused_forward(
    model: nn.Module,
    student: OutputLayer,
    inputs: dict[str, Any],
    labels: torch.Tensor,
    teacher: tuple[OutputLayer, torch.Tensor] | None = None,
    probe: Probe | None = None,
    **loss_kwargs,
) -> tuple[Any, SALTLossOutput]:
    """
    The student's forward with `fused_linear_salt_loss` in place of its output layer: returns the model's outputs
    (their `logits` a placeholder: zeros [..., 1], or the `probe`'s [1, P, V]) and the loss (None when a probed
    forward did not call the layer once). `teacher` is the
    teacher's output layer and hidden states (`teacher_hidden`); `loss_kwargs` go to the loss (weights, divergence,
    temperature, vocab_size, chunk_size).
    """
    results = []
    module = student.module

    def forward(hidden):
        out = fused_linear_salt_loss(
            hidden,
            module.weight,  # as the engine gathered it for this forward
            labels,
            student_bias=module.bias,
            student_scale=student.scale,
            student_softcap=student.softcap,
            **_teacher_kwargs(teacher),
            **loss_kwargs,
        )
        results.append(out)
        # 0 times the loss: the hooks on this layer's output then see the loss's backward pass through them
        zero = (out.loss * 0.0).to(hidden.dtype)
        return probe(hidden) + zero if probe is not None else zero.expand(*hidden.shape[:-1], 1).contiguous()

    with _gathered(teacher[0] if teacher is not None else None), swapped_forward(module, forward):
        outputs = model(**inputs)
    if len(results) != 1:  # with a probe, its verdict says so; without one, a model that changed since the first step
        if probe is not None:
            return outputs, None
        raise RuntimeError(
            f"the student's forward called its output layer {len(results)} times, not once: use "
            "loss_implementation='logits'"
        )
    (out,) = results
    placeholder = outputs.logits
    # + 0 exactly, with the model's output in the loss's graph (its gradient there is 0)
    loss = out.loss + (placeholder - placeholder.detach()).sum() if placeholder.requires_grad else out.loss
    return outputs, out._replace(loss=loss)


# ---- the run's choice ----------------------------------------------------------------------------------------------


class FusedHead:
    """
    Which implementation of SALT's loss a run uses (`SALTConfig.loss_implementation`), and both implementations.

    Args:
        args (`SALTConfig`): the run's arguments (the loss's fields and `loss_implementation`).
        accelerator (`accelerate.Accelerator`): the trainer's (autocast of the teacher, the check's reduction).
        kd_vocab_size (`int`, *optional*): the vocabulary KD is computed over (`SALTTrainer.kd_vocab_size`).

    Attributes:
        reason (`str` or `None`): why the run uses the logits path although "auto" or "fused_linear" was asked for.
        loss_only (`bool`): set by evaluation when no logits are returned (the fused path may then run there too).
    """

    def __init__(self, args, accelerator, kd_vocab_size: int | None = None):
        self.requested = args.loss_implementation
        self.args, self.accelerator, self.kd_vocab_size = args, accelerator, kd_vocab_size
        self.reason: str | None = None
        self.loss_only = False
        self._checked: set[str] = set()  # the models whose logits the first step compared

    @property
    def implementation(self) -> str:
        """What the run uses now: "fused_linear" or "logits"."""
        return "fused_linear" if self.requested != "logits" and self.reason is None else "logits"

    def check_models(
        self, student: nn.Module | None, teacher: nn.Module | None, fsdp_version: int | None = None
    ) -> None:
        """
        The checks that need no forward, when the trainer is built; "fused_linear" raises if one fails. `fsdp_version`
        is that of the student's FSDP sharding (None without FSDP).
        """
        if self.implementation == "logits":
            return
        # FSDP2 unshards the root's parameters (the output layer's among them) for the root's forward, inside which the
        # fused loss runs and receives the whole weight, and reduce-scatters the weight's gradient that it returns
        # (tests/distributed/test_fsdp2.py); FSDP1's flat parameters are not tested.
        if fsdp_version is not None and fsdp_version != 2:
            return self._refuse(
                f"the student is sharded with FSDP version {fsdp_version}, where the fused path is not tested; it "
                "runs inside the output layer's forward under FSDP2 (fsdp_version 2), DDP and DeepSpeed ZeRO"
            )
        if self.args.torch_compile and self.args.torch_compile_mode in CUDA_GRAPH_MODES:
            return self._refuse(
                f"torch_compile_mode={self.args.torch_compile_mode!r} captures CUDA graphs, around which the fused "
                "path (run eagerly between the compiled graphs) is not tested (the default mode and "
                "'max-autotune-no-cudagraphs' keep it)"
            )
        try:
            if student is not None:
                output_layer(student, "student")
            if teacher is not None:
                output_layer(teacher, "teacher")
        except NotFusableError as err:
            self._refuse(str(err))

    def _refuse(self, reason: str) -> None:
        if self.requested == "fused_linear":
            raise ValueError(
                f"loss_implementation='fused_linear' cannot be used: {reason}. Use loss_implementation='logits', "
                "or 'auto', which falls back to it by itself."
            )
        self._fall_back(reason)

    def _fall_back(self, reason: str) -> None:
        self.reason = reason
        logger.warning(
            f"loss_implementation={self.requested!r}: using the logits path, because {reason}.",
            main_process_only=True,
        )

    @contextlib.contextmanager
    def logits_unneeded(self, loss_only: bool) -> Iterator[None]:
        """Evaluation's `prediction_loss_only`: whether `compute_loss(return_outputs=True)` may return no logits."""
        self.loss_only = loss_only
        try:
            yield
        finally:
            self.loss_only = False

    def loss(self, model, inputs, labels, teacher, kd_weight: float, return_outputs: bool = False):
        """
        The model's outputs and `SALTLossOutput` for one batch, with the KD term against `teacher` (a
        `salt_hf.teacher.Teacher`, placed, or a `salt_hf.targets.StoredTeacher`, read at the batch's row ids, the
        `ROW_ID` column; None without one) at weight `kd_weight`. Logits are returned (the logits path) when
        `return_outputs` asks for them outside a loss-only evaluation.
        """
        # transformers adds `skip_logits=True` to a loss-only evaluation's batch under `use_liger_kernel`, for Liger's
        # forward to compute its own cross-entropy from the labels, and that forward refuses it without labels. Both
        # models get no labels here (SALT computes its loss itself), so Liger's forward calls the output layer, as the
        # model's own would, on both paths.
        row_ids = inputs.get(ROW_ID)  # the rows' indices in the training set, for stored teacher targets
        inputs = {key: value for key, value in inputs.items() if key not in ("skip_logits", ROW_ID)}
        if isinstance(teacher, StoredTeacher):
            targets = teacher.targets(row_ids, labels.device)
            return self._stored(model, inputs, labels, targets, kd_weight, return_outputs)
        if self.implementation == "fused_linear" and (self.loss_only or not return_outputs):
            result = self._fused(model, inputs, labels, teacher, kd_weight)
            if result is not None:
                return result
        return self._logits(model, inputs, labels, teacher, kd_weight)

    def _fused(self, model, inputs, labels, teacher, kd_weight):
        """The fused path; None when a check fails (the run then uses the logits path from this batch on)."""
        student = self._layer(model, "student")
        taught = None
        if student is not None and teacher is not None:
            layer = self._layer(teacher.module, "teacher")
            if layer is None:
                return None
            probe = self._probe("teacher", layer, labels)
            with self.accelerator.autocast():  # as on the logits path
                hidden, own = teacher_hidden(teacher.module, layer, inputs, probe)
            if not self._passes(probe, own):
                return None
            taught = (layer, hidden)
        if student is None:
            return None
        probe = self._probe("student", student, labels)
        options = self._options(kd_weight, taught is not None)
        outputs, out = fused_forward(model, student, inputs, labels, taught, probe, **options)
        # a failed check drops this forward's graph; the logits path then runs the batch again
        return (outputs, out) if self._passes(probe, outputs.logits) else None

    def _logits(self, model, inputs, labels, teacher, kd_weight):
        outputs = model(**inputs)
        teacher_logits = None
        if teacher is not None:
            with self.accelerator.autocast():
                teacher_logits = teacher.logits(inputs)
        options = self._options(kd_weight, teacher_logits is not None)
        return outputs, salt_loss(outputs.logits, labels, teacher_logits, compile=self.args.kd_compile, **options)

    def _stored(self, model, inputs, labels, targets, kd_weight, return_outputs):
        """The KD term against stored targets (`salt_hf.losses.SparseTargets`): no teacher forward on either path."""
        options = {**self._options(kd_weight, True), "teacher_targets": targets}
        if self.implementation == "fused_linear" and (self.loss_only or not return_outputs):
            student = self._layer(model, "student")
            if student is not None:
                probe = self._probe("student", student, labels)
                outputs, out = fused_forward(model, student, inputs, labels, None, probe, **options)
                if self._passes(probe, outputs.logits):
                    return outputs, out
        outputs = model(**inputs)
        return outputs, salt_loss(outputs.logits, labels, compile=False, **options)

    def _options(self, kd_weight: float, with_teacher: bool) -> dict[str, Any]:
        args = self.args
        nll_weight, kd_weight = loss_weights(kd_weight, args.kd_mix)
        return dict(
            nll_weight=nll_weight,
            kd_weight=kd_weight,
            divergence=args.kd_divergence,
            temperature=args.kd_temperature,
            beta=args.kd_jsd_beta,
            vocab_size=self.kd_vocab_size if with_teacher else None,
            chunk_size=args.kd_chunk_size,
        )

    # ---- the first step's checks --------------------------------------------------------------------------------

    def _layer(self, model, name: str) -> OutputLayer | None:
        """The model's output layer, looked up on every batch (`model_init` replaces the model); None to fall back."""
        try:
            return output_layer(model, name)
        except NotFusableError as err:
            self._refuse(str(err))
            return None

    def _probe(self, name: str, layer: OutputLayer, labels: torch.Tensor) -> Probe | None:
        """The first batch's check of a model, once per run; None after."""
        if name in self._checked:
            return None
        self._checked.add(name)
        return Probe(name, layer, labels.shape)

    def _passes(self, probe: Probe | None, own: torch.Tensor) -> bool:
        if probe is None:
            return True
        reason = probe.verdict(own)
        # one decision for all processes: they run the same collectives from here on
        failed = torch.tensor(float(reason is not None), device=own.device)
        if self.accelerator.reduce(failed, reduction="sum").item() > 0:
            self._fall_back(f"the first step's check failed: {reason or 'on another process'}")
            return False
        return True
