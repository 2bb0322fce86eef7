"""SALTTrainer: a drop-in `transformers.Trainer` that distils from a small teacher during the first n_KD steps."""

from __future__ import annotations

import math
from typing import Any

import torch
from accelerate.logging import get_logger
from transformers import PreTrainedModel, Trainer

from .callbacks import TeacherLifecycleCallback
from .checkpointing import PreemptionSafeCheckpoints
from .config import SALTConfig, as_salt_config
from .kd_stop import AutoKDStop
from .labels import pop_shift_labels
from .launch import check_launch
from .losses.head import FusedHead
from .schedules import auto_kd_end, auto_kd_weight, kd_weight
from .selection import KDSelection, select_kd_data
from .speedups import regroup_by_layer, warmup_inputs
from .targets import StoredTeacher
from .teacher import Teacher

logger = get_logger(__name__)


class SALTTrainer(PreemptionSafeCheckpoints, Trainer):
    """
    [`~transformers.Trainer`] for SALT (Rawat et al., 2024, https://arxiv.org/abs/2410.18779).

    For optimizer steps `t < n_KD` the loss is `((1 - w_t) * NLL_sum + w_t * KD_sum) / num_items_in_batch` with the
    small teacher's token distributions; from n_KD on it is the plain next-token loss, the teacher is released and
    never called again. With no teacher or `kd_weight=0` it trains exactly like `Trainer`.

    Args:
        model (`PreTrainedModel` or `torch.nn.Module`):
            The student (the larger model), a causal LM; PEFT models work.
        teacher_model (`PreTrainedModel` or `str`, *optional*):
            The small, already trained teacher, or its path / hub id (loaded only if the run needs it). Defaults to
            `args.teacher_model_name_or_path`. It never enters the optimizer or a checkpoint.
        args (`SALTConfig`, *optional*):
            Training arguments with the SALT fields.
        teacher_processing_class (*optional*):
            The teacher's tokenizer, to check that it equals the student's (`processing_class`). Loaded from the
            teacher's folder when the teacher is given as a path.
        **kwargs:
            Every other argument of `Trainer`.

    Attributes:
        teacher (`Teacher`, `StoredTeacher` or `None`): the teacher, or its stored targets; None without SALT.
        kd_selection (`salt_hf.selection.KDSelection` or `None`): SALT_DS's scores and selection, once computed.
        kd_sampler (`salt_hf.selection.KDSelectionSampler` or `None`): SALT_DS's sample order, once built.
        fused_head (`salt_hf.losses.head.FusedHead`): which loss implementation the run uses (`.implementation`), why.
    """

    # compute_loss divides the loss by the global number of supervised tokens itself.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: PreTrainedModel | torch.nn.Module | None = None,
        teacher_model: PreTrainedModel | torch.nn.Module | str | None = None,
        args: SALTConfig | None = None,
        teacher_processing_class=None,
        **kwargs,
    ):
        args = as_salt_config(args)
        source = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        self.teacher: Teacher | StoredTeacher | None = None
        self.kd_vocab_size: int | None = None
        self.kd_selection: KDSelection | None = None
        self._kd_steps: int | None = None
        # Every check runs before Trainer.__init__, which creates the output folder: the launch, then the teacher's
        # folder (read, not loaded: the teacher loads when the KD stage starts) and the teacher against the student.
        distils = source is not None and args.kd_weight > 0.0
        check_launch(args, distils=distils)
        if args.teacher_targets is not None and args.kd_weight > 0.0:  # stored targets: the teacher is never loaded
            stored = StoredTeacher.for_run(args, source, model, teacher_processing_class, kwargs)
            self.teacher, self.kd_vocab_size, kwargs["train_dataset"] = stored
        elif distils:
            teacher = Teacher(source, init_kwargs=args.teacher_model_init_kwargs, placement=args.teacher_placement)
            teacher.check_source()
            tokenizer = kwargs.get("processing_class")
            self.kd_vocab_size = teacher.check_student(model, tokenizer, teacher_processing_class)
            self.teacher = teacher

        super().__init__(model=model, args=args, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError(
                f"SALTTrainer does not support torch.nn.DataParallel ({self.args.n_gpu} GPUs in one process): "
                "launch one process per GPU with `accelerate launch` or `torchrun`."
            )
        if isinstance(self.teacher, StoredTeacher):
            self.teacher.keep_row_ids(self)
        self.fused_head = FusedHead(self.args, self.accelerator, self.kd_vocab_size)
        fsdp = self.accelerator.state.fsdp_plugin if self.is_fsdp_enabled else None
        self.fused_head.check_models(self.model, self.teacher_model, None if fsdp is None else fsdp.fsdp_version)
        # the Trainer counts supervised tokens (on shifted labels) over the accumulated batch and processes, any model
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        # [nll_sum, kd_sum, kd_tokens, tokens, teacher_nll_sum] since the last logging step, on this process
        self._metric_sums = torch.zeros(5, dtype=torch.float64, device=self.args.device)
        # [nll_sum, teacher_nll_sum, tokens] of this optimizer step's KD micro-batches (kd_steps="auto")
        self._step_sums = torch.zeros(3, dtype=torch.float64, device=self.args.device)
        self._last_kd_weight, self.kd_sampler = 0.0, None
        if self.teacher is not None:
            self.add_callback(TeacherLifecycleCallback(self))
        if self.teacher is not None and self.args.kd_auto:
            self.add_callback(AutoKDStop(self.args.kd_auto_window))

    # ---- the KD stage ---------------------------------------------------------------------------------------------

    def resolve_kd_steps(self, max_steps: int) -> int:
        """Fixes n_KD for a run of `max_steps` optimizer steps (from `kd_steps` or `kd_ratio`) and returns it."""
        self._kd_steps = self.args.resolve_kd_steps(max_steps)
        if self.kd_stop is not None:  # kd_steps="auto": its floor and ceiling in this run's steps
            self.kd_stop.set_bounds(self.args, max_steps)
        return self._kd_steps

    @property
    def kd_steps(self) -> int:
        """n_KD, the first step with w = 0 (under kd_steps="auto": once decided; its latest value before)."""
        stop = self.kd_stop
        if stop is not None and stop.decided:
            return auto_kd_end(self.args.kd_schedule, stop.stop_step, stop.fall)
        if self._kd_steps is None:
            self.resolve_kd_steps(self.state.max_steps or self.args.max_steps)
        return self._kd_steps

    @property
    def kd_stop(self) -> AutoKDStop | None:
        """The catch-up test that ends the KD stage under `kd_steps="auto"` (`salt_hf.kd_stop`), else None."""
        return next((cb for cb in self.callback_handler.callbacks if isinstance(cb, AutoKDStop)), None)

    def update_kd_stop(self, step: int) -> None:
        """kd_steps="auto": the step's statistics, summed over processes (a collective: every process), to the test."""
        stop = self.kd_stop
        if stop is None or stop.decided:
            return
        reason = stop.update(step, self.accelerator.reduce(self._step_sums, reduction="sum").tolist())
        self._step_sums.zero_()
        if reason is None:
            return
        if self.kd_sampler is not None:  # SALT_DS: the selection's batches end with the KD stage
            stop.end_data_selection(self.kd_sampler, self.kd_steps, self.accelerator, self.args)
        logger.info(f"kd_steps='auto': the KD stage ends at step {self.kd_steps} ({reason})", main_process_only=True)
        should_log = self.control.should_log  # on_log clears it: keep this step's own logging step
        self.log(dict(reason))
        self.control.should_log = should_log

    has_teacher = property(lambda self: self.teacher is not None, doc="Whether this run distils from a teacher.")

    @property
    def teacher_model(self) -> torch.nn.Module | None:
        """The teacher's module while it is loaded (a DeepSpeed engine under ZeRO-3 placement), else None."""
        return self.teacher.module if self.teacher is not None else None

    def current_kd_weight(self, step: int) -> float:
        """w_t at an optimizer step; a function of the global step alone, so identical on every process."""
        if self.teacher is None:
            return 0.0
        args, stop = self.args, self.kd_stop
        if stop is not None:
            return auto_kd_weight(
                step, schedule=args.kd_schedule, weight=args.kd_weight, stop_step=stop.stop_step, ramp=stop.fall
            )
        return kd_weight(step, schedule=args.kd_schedule, weight=args.kd_weight, kd_steps=self.kd_steps)

    def kd_active(self, step: int) -> bool:
        return self.current_kd_weight(step) > 0.0

    def place_teacher(self) -> torch.nn.Module | None:
        """Loads and places the teacher for this run's accelerator (once; every process at the same step)."""
        module = self.teacher.place(self.accelerator, self.args) if self.teacher is not None else None
        self.fused_head.check_models(None, module)  # a teacher given by its path is loaded only now
        return module

    def salt_settings(self) -> dict[str, Any]:
        """How this run used SALT, for model cards: the teacher, w, the schedule, n_KD and where the KD stage ended."""
        ended = self.teacher is not None and self.state.global_step >= self.kd_steps
        kd_steps = ("auto" if self.args.kd_auto else self.kd_steps) if self.teacher is not None else 0
        return {
            "teacher": self.teacher.name if self.teacher is not None else None,
            "kd_weight": self.args.kd_weight if self.teacher is not None else 0.0,
            "kd_schedule": self.args.kd_schedule,
            "kd_steps": kd_steps,
            "kd_end_step": self.kd_steps if ended else None,
        }

    # ---- SALT_DS: the teacher chooses the KD stage's sequences ------------------------------------------------------

    def get_train_dataloader(self):
        if self.args.kd_data_selection:
            self.prepare_kd_selection()
        return super().get_train_dataloader()

    def prepare_kd_selection(self) -> KDSelection | None:
        """
        SALT_DS: scores the training set with the teacher (or reads the cached scores) and selects the KD stage's
        sequences (`salt_hf.selection.select_kd_data`). Called by `get_train_dataloader` when
        `kd_data_selection=True`; runs on every process (scoring is spread over them).
        """
        if self.kd_selection is None:
            kd_steps = self.resolve_kd_steps(self.args.max_steps) if self.teacher is not None else 0
            self.kd_selection = select_kd_data(
                self.train_dataset, self.teacher, self.args, kd_steps, load_teacher=self.place_teacher
            )
            dataset = self.train_dataset
            if self.kd_selection is not None and hasattr(dataset, "add_column") and self.args.remove_unused_columns:
                if "kd_score" not in dataset.column_names:
                    # the scores as a column, for inspection (the Trainer drops it before the model's forward)
                    self.train_dataset = dataset.add_column("kd_score", self.kd_selection.scores.tolist())
        return self.kd_selection

    def _get_train_sampler(self, train_dataset=None):
        if self.kd_selection is None:
            return super()._get_train_sampler(train_dataset)
        args = self.args
        self.kd_sampler = self.kd_selection.sampler(
            len(self.train_dataset),
            kd_steps=self.kd_steps,
            max_steps=args.max_steps,
            global_batch=self._train_batch_size * args.gradient_accumulation_steps * args.world_size,
            seed=args.data_seed if args.data_seed is not None else args.seed,
        )
        return self.kd_sampler

    # ---- optimizer ------------------------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        """
        The Trainer's optimizer for `args.optim`; with `layerwise_lr_decay` < 1 its parameter groups are split by
        layer and each learning rate multiplied (`salt_hf.speedups.regroup_by_layer`). Runs where the Trainer builds
        the optimizer, also before DeepSpeed wraps it; an optimizer passed to the Trainer is left as it is.
        """
        built_here = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if built_here and self.args.layerwise_lr_decay != 1.0:
            regroup_by_layer(optimizer, self.model if model is None else model, self.args)
        return optimizer

    # ---- loss -----------------------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        training = model.training
        inputs = warmup_inputs(dict(inputs), self.state.global_step, self.args) if training else dict(inputs)
        shift_labels = pop_shift_labels(inputs)
        w = self.current_kd_weight(self.state.global_step) if training else 0.0
        if w > 0.0:
            # w is the same on every process (a ZeRO-3 teacher's forward and placement are collectives)
            self.place_teacher()
        teacher = self.teacher if w > 0.0 else None
        outputs, out = self.fused_head.loss(model, inputs, shift_labels, teacher, w, return_outputs)
        loss = self._normalise(out.loss, out.num_tokens, num_items_in_batch)
        if training:
            kd_tokens = out.num_tokens if w > 0.0 else torch.zeros_like(out.num_tokens)
            sums = [out.nll, out.kd, kd_tokens, out.num_tokens, out.teacher_nll]
            self._metric_sums += torch.stack([x.to(self._metric_sums) for x in sums])
            if w > 0.0:
                self._step_sums += torch.stack([x.to(self._step_sums) for x in (out.nll, out.teacher_nll, kd_tokens)])
            self._last_kd_weight = w
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss_only = self.args.prediction_loss_only if prediction_loss_only is None else prediction_loss_only
        with self.fused_head.logits_unneeded(loss_only):  # the fused path returns no logits
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def _normalise(self, loss_sum, num_tokens, num_items_in_batch) -> torch.Tensor:
        if num_items_in_batch is None:
            return loss_sum / num_tokens.clamp_min(1)
        loss = loss_sum / num_items_in_batch
        if self.args.average_tokens_across_devices:
            # `num_items_in_batch` counts all processes' tokens and DDP / DeepSpeed average over them: multiply back
            loss = loss * self.accelerator.num_processes
        return loss

    # ---- logging --------------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training logging step: every process gets here together
            sums = self.accelerator.reduce(self._metric_sums, reduction="sum").tolist()
            self._metric_sums.zero_()
            nll_sum, kd_sum, kd_tokens, tokens, teacher_nll_sum = sums
            logs["nll_loss"] = nll_sum / max(tokens, 1.0)
            logs["kd_loss"] = kd_sum / kd_tokens if kd_tokens > 0 else 0.0
            if kd_tokens > 0:  # the teacher's loss on the KD batches' tokens, against the student's nll_loss
                logs["teacher_nll"] = teacher_nll_sum / kd_tokens
            logs["kd_weight"] = self._last_kd_weight
        for key in [k for k in logs if k.endswith("_loss") and k.startswith("eval")]:
            # eval losses are the plain NLL per token (w = 0 in eval), comparable between SALT and the baseline
            logs[key[: -len("loss")] + "perplexity"] = math.exp(min(logs[key], 700.0))
        super().log(logs, start_time)
