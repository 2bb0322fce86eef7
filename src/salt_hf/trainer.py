"""SALTTrainer: a drop-in `transformers.Trainer` that distils from a small teacher during the first n_KD steps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import is_deepspeed_available
from transformers import PreTrainedModel, Trainer

from .callbacks import TeacherLifecycleCallback
from .config import SALTConfig
from .losses import salt_loss
from .schedules import kd_weight
from .selection import (
    KDSelectionSampler,
    default_score_cache_dir,
    describe_selection,
    model_fingerprint,
    path_fingerprint,
    score_cache_key,
    score_dataset,
    select_sequences,
    subset_for_scoring,
)
from .speedups import layerwise_param_groups, reshape_for_length, seq_length_at
from .teacher import (
    check_tokenizers_match,
    free_memory,
    is_zero3_partitioned,
    load_teacher,
    load_teacher_config,
    load_teacher_tokenizer,
    num_parameters,
    output_vocab_size,
    prepare_teacher,
    resolve_kd_vocab_size,
    shard_teacher_zero3,
    zero3_inference_config,
)

logger = get_logger(__name__)


def _warn_if_teacher_larger(teacher: torch.nn.Module, student: torch.nn.Module) -> None:
    n_teacher, n_student = num_parameters(teacher), num_parameters(student)
    if n_teacher > n_student:
        logger.warning(
            f"The teacher ({n_teacher:,} parameters) is larger than the student ({n_student:,}): this is ordinary "
            "knowledge distillation, not SALT, whose teacher is the smaller model.",
            main_process_only=True,
        )


class SALTTrainer(Trainer):
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
        if args is None:
            args = SALTConfig(output_dir="trainer_output")
        elif not isinstance(args, SALTConfig):
            raise TypeError(
                f"SALTTrainer needs a SALTConfig as args, got {type(args).__name__}: use SALTConfig(...) with the "
                "same fields (it subclasses TrainingArguments)."
            )
        if teacher_model is None:
            teacher_model = args.teacher_model_name_or_path
        self.teacher_model: torch.nn.Module | None = None
        self._teacher_source: str | None = None
        self._teacher_released = False
        self._teacher_placement_used: str | None = None  # set when the teacher is placed: "replicate" or "zero3"
        self._kd_steps: int | None = None
        self._kd_selection: dict | None = None  # SALT_DS: scores and selected indices, once computed
        self.kd_vocab_size: int | None = None
        if teacher_model is not None and args.kd_weight > 0.0:
            # Every check runs before Trainer.__init__, which creates the output folder.
            if args.teacher_placement == "zero3" and not is_deepspeed_available():
                raise ImportError(
                    "teacher_placement='zero3' shards the teacher with DeepSpeed, which is not installed: "
                    "pip install 'salt_hf[deepspeed]' (or use teacher_placement='replicate')."
                )
            self._setup_teacher(
                model,
                teacher_model,
                args.teacher_model_init_kwargs,
                kwargs.get("processing_class"),
                teacher_processing_class,
            )

        super().__init__(model=model, args=args, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError(
                f"SALTTrainer does not support torch.nn.DataParallel ({self.args.n_gpu} GPUs in one process): "
                "launch one process per GPU with `accelerate launch` or `torchrun`."
            )
        if self.has_teacher and self.args.teacher_placement == "zero3" and self.is_fsdp_enabled:
            raise ValueError(
                "teacher_placement='zero3' shards the teacher with DeepSpeed, which does not mix with an FSDP "
                "student: use teacher_placement='replicate' or DeepSpeed ZeRO-3 for the student."
            )
        # Our compute_loss consumes `num_items_in_batch` (it does not pass it to the model): ask the Trainer to count
        # supervised tokens over the whole accumulated batch and across processes for every model, and to count them
        # on shifted labels, since the NLL here is always the causal-LM next-token loss.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        # [nll_sum, kd_sum, kd_tokens, tokens] since the last logging step, on this process
        self._metric_sums = torch.zeros(4, dtype=torch.float64, device=self.args.device)
        self._last_kd_weight = 0.0
        if self.has_teacher:
            self.add_callback(TeacherLifecycleCallback(self))

    # ---- teacher --------------------------------------------------------------------------------------------------

    def _setup_teacher(self, student, teacher_model, init_kwargs, processing_class, teacher_processing_class) -> None:
        if isinstance(teacher_model, str):
            # Checks need only the config and tokenizer; the weights are loaded when a run starts in the KD stage.
            self._teacher_source = teacher_model
            teacher_config = load_teacher_config(teacher_model, init_kwargs)
            if teacher_processing_class is None:
                teacher_processing_class = load_teacher_tokenizer(teacher_model, init_kwargs)
            teacher_vocab = output_vocab_size(teacher_config)
        else:
            self.teacher_model = teacher_model
            teacher_vocab = output_vocab_size(teacher_model)

        tokenizer = processing_class if hasattr(processing_class, "get_vocab") else None
        check_tokenizers_match(tokenizer, teacher_processing_class)
        self.kd_vocab_size = resolve_kd_vocab_size(output_vocab_size(student), teacher_vocab, tokenizer)

        if self.teacher_model is not None:
            _warn_if_teacher_larger(self.teacher_model, student)

    def _teacher_placement(self) -> str:
        """'replicate' or 'zero3'; a teacher the user built under an active ZeRO-3 config is already partitioned."""
        if self.args.teacher_placement == "replicate" and self.teacher_model is not None:
            if is_zero3_partitioned(self.teacher_model):
                logger.warning(
                    "The teacher was created under DeepSpeed ZeRO-3 (`zero.Init`, e.g. by from_pretrained after "
                    "SALTConfig(deepspeed=<stage 3>)), so its weights are partitioned: sharding it with ZeRO-3 "
                    "inference. Pass the teacher's path, or load it before creating SALTConfig, to replicate it.",
                    main_process_only=True,
                )
                return "zero3"
        return self.args.teacher_placement

    def _teacher_zero3_config(self) -> dict:
        plugin = self.accelerator.state.deepspeed_plugin
        source = self.teacher_model if self.teacher_model is not None else self._teacher_source
        teacher_config = (
            source.config
            if not isinstance(source, str)
            else load_teacher_config(source, self.args.teacher_model_init_kwargs)
        )
        return zero3_inference_config(
            teacher_config,
            micro_batch_size=self.args.per_device_train_batch_size,
            trainer_ds_config=plugin.deepspeed_config if plugin is not None else None,
            bf16=self.args.bf16,
            fp16=self.args.fp16,
        )

    def _ensure_teacher(self) -> None:
        """
        Loads (if given as a path) and places the teacher, once. Runs on every process at the same step (at the start
        of a run inside the KD stage): with ZeRO-3 placement, loading and wrapping are collectives.
        """
        if self._teacher_released or self._teacher_placement_used is not None or not self.has_teacher:
            return
        placement = self._teacher_placement()
        zero3_config = self._teacher_zero3_config() if placement == "zero3" else None
        if self.teacher_model is None:
            logger.info(f"Loading the teacher from {self._teacher_source}", main_process_only=True)
            self.teacher_model = load_teacher(
                self._teacher_source, self.args.teacher_model_init_kwargs, zero3_config=zero3_config
            )
            _warn_if_teacher_larger(self.teacher_model, self.model)
        if placement == "zero3":
            self.teacher_model = shard_teacher_zero3(self.teacher_model, zero3_config)
        else:
            prepare_teacher(self.teacher_model, self.accelerator.device)
        self._teacher_placement_used = placement

    def release_teacher(self) -> None:
        """Drops the trainer's reference to the teacher and frees its memory; it is never called again."""
        if self._teacher_released:
            return
        had_teacher = self.teacher_model is not None
        if had_teacher and self._teacher_placement_used == "zero3":
            self.teacher_model.destroy()  # the DeepSpeed engine: removes its parameter-gathering hooks
        self.teacher_model = None
        self._teacher_released = True
        free_memory()
        if had_teacher:
            logger.info(f"KD stage over at step {self.state.global_step}: teacher released.", main_process_only=True)

    # ---- SALT_DS: the teacher chooses the KD stage's sequences ------------------------------------------------------

    def get_train_dataloader(self):
        if self.args.kd_data_selection:
            self.prepare_kd_selection()
        return super().get_train_dataloader()

    def _get_train_sampler(self, train_dataset=None):
        selection = self._kd_selection
        if selection is None or not selection["selected"].size:
            return super()._get_train_sampler(train_dataset)
        # one "epoch" holding the whole run: the KD stage's n_KD global batches from the selected sequences, then
        # permutations of the whole dataset; Accelerate hands each process its share of every global batch
        global_batch = self._train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return KDSelectionSampler(selection["selected"], len(self.train_dataset),
                                  kd_samples=self.kd_steps * global_batch,
                                  total_samples=self.args.max_steps * global_batch, seed=seed)  # fmt: skip

    def _teacher_fingerprint(self) -> str:
        if self.teacher_model is None and self._teacher_source is not None:
            fingerprint = path_fingerprint(self._teacher_source, self.args.teacher_model_init_kwargs)
            if fingerprint is not None:
                return fingerprint
            self._ensure_teacher()  # a hub id: fingerprint the loaded weights
        return model_fingerprint(self.teacher_model)

    def _teacher_for_scoring(self) -> torch.nn.Module:
        self._ensure_teacher()
        return self.teacher_model

    def prepare_kd_selection(self) -> dict | None:
        """
        SALT_DS: scores the training set with the teacher (or reads the cached scores), selects the KD stage's
        sequences (`kd_select_fraction`, `kd_select_drop_top`) and returns `{"scores", "selected", "summary"}`. Called
        by `get_train_dataloader` when `kd_data_selection=True`; runs on every process (scoring is spread over them).
        """
        if self._kd_selection is not None:
            return self._kd_selection
        args = self.args
        if not self.has_teacher or args.kd_weight == 0.0 or self._teacher_released:
            logger.warning("kd_data_selection=True without a teacher or with kd_weight=0: no selection.")
            return None
        dataset = self.train_dataset
        if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
            raise ValueError(
                "kd_data_selection=True needs a training dataset with a length (a map-style dataset, not a streamed "
                "one): the teacher scores every sequence before training."
            )
        if self._resolve_kd_steps(args.max_steps) == 0:
            return None
        cache_dir = args.kd_select_cache_dir or default_score_cache_dir()
        seed = args.data_seed if args.data_seed is not None else args.seed
        to_score, pool, rows_fingerprint = subset_for_scoring(dataset, args.kd_select_max_sequences, seed)
        key = score_cache_key(rows_fingerprint, self._teacher_fingerprint(), top_k=args.kd_select_top_k,
                              ignore_index=-100)  # fmt: skip
        scores = score_dataset(
            None,
            to_score,
            cache_dir=cache_dir,
            cache_key=key,
            top_k=args.kd_select_top_k,
            batch_size=args.kd_select_batch_size or args.per_device_eval_batch_size,
            load_teacher=self._teacher_for_scoring,
            show_progress=not args.disable_tqdm,
        )
        # the fraction (and the band) apply to the scored sequences
        selected = select_sequences(scores, fraction=args.kd_select_fraction, drop_top=args.kd_select_drop_top,
                                    seed=seed)  # fmt: skip
        if pool is not None:  # back to dataset indices; unscored sequences get NaN
            selected = pool[selected]
            full = np.full(len(dataset), np.nan, dtype=np.float32)
            full[pool] = scores
            scores = full
        summary = describe_selection(scores, selected)
        logger.info(f"SALT_DS selection: {summary}", main_process_only=True)
        self._kd_selection = {
            "scores": scores,
            "selected": selected,
            "summary": summary,
            "cache": str(Path(cache_dir) / key),
        }
        if (
            hasattr(dataset, "add_column")  # a datasets.Dataset
            and args.remove_unused_columns
            and "kd_score" not in dataset.column_names
        ):
            # the scores as a column, for inspection (the Trainer drops it before the model's forward)
            self.train_dataset = dataset.add_column("kd_score", scores.tolist())
        return self._kd_selection

    # ---- schedule -------------------------------------------------------------------------------------------------

    def _resolve_kd_steps(self, max_steps: int) -> int:
        self._kd_steps = self.args.resolve_kd_steps(max_steps)
        return self._kd_steps

    @property
    def kd_steps(self) -> int:
        """n_KD of this run (resolved from `kd_ratio` and the run's `max_steps` when training starts)."""
        if self._kd_steps is None:
            self._resolve_kd_steps(self.state.max_steps or self.args.max_steps)
        return self._kd_steps

    @property
    def has_teacher(self) -> bool:
        return self._teacher_source is not None or self.teacher_model is not None

    def current_kd_weight(self, step: int) -> float:
        """w_t at an optimizer step; a function of the global step alone, so identical on every process."""
        if not self.has_teacher or self.args.kd_weight == 0.0:
            return 0.0
        return kd_weight(step, schedule=self.args.kd_schedule, weight=self.args.kd_weight, kd_steps=self.kd_steps)

    def kd_active(self, step: int) -> bool:
        return self.current_kd_weight(step) > 0.0

    # ---- optimizer ------------------------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        """
        The Trainer's optimizer for `args.optim`; with `layerwise_lr_decay` < 1 its parameter groups (the Trainer's
        decay / no-decay groups, or the optimizer's own) are split by layer and each learning rate multiplied
        (`salt_hf.speedups.layerwise_param_groups`). Runs where the Trainer builds the optimizer, also before DeepSpeed
        wraps it; an optimizer passed to the Trainer is left as it is.
        """
        built_here = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if built_here and self.args.layerwise_lr_decay != 1.0:
            groups = layerwise_param_groups(
                optimizer.param_groups,
                self.model if model is None else model,
                decay=self.args.layerwise_lr_decay,
                direction=self.args.layerwise_lr_direction,
            )
            # No step has run: no optimizer state refers to the old groups. add_param_group fills in the defaults.
            optimizer.param_groups.clear()
            for group in groups:
                optimizer.add_param_group(group)
        return optimizer

    # ---- loss -----------------------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        inputs = dict(inputs)
        if model.training and self.args.seq_warmup_steps > 0:
            # Sequence-length warmup (salt_hf.speedups): rows split by the global step, before the student's and the
            # teacher's forward, so both see the same rows; the supervised tokens, and num_items_in_batch, are kept.
            args = self.args
            length = seq_length_at(
                self.state.global_step,
                schedule=args.seq_warmup_schedule,
                warmup_steps=args.seq_warmup_steps,
                start_length=args.seq_warmup_start_length,
                full_length=inputs["input_ids"].shape[1],
            )
            inputs = reshape_for_length(inputs, length)
        labels = inputs.pop("labels", None)
        shift_labels = inputs.pop("shift_labels", None)
        if shift_labels is None:
            if labels is None:
                raise ValueError(
                    "SALTTrainer needs `labels` (or `shift_labels`) in every batch: use a causal-LM collator such as "
                    "DataCollatorForLanguageModeling(tokenizer, mlm=False) or salt_hf.data's packing."
                )
            # Position t predicts token t + 1; the last position of each row predicts nothing.
            shift_labels = F.pad(labels[..., 1:], (0, 1), value=-100)

        training = model.training
        w = self.current_kd_weight(self.state.global_step) if training else 0.0
        outputs = model(**inputs)

        teacher_logits = None
        if w > 0.0:
            # w comes from the global step: every process gets here on the same steps (a ZeRO-3 teacher's forward
            # and placement are collectives).
            if self._teacher_placement_used is None:
                self._ensure_teacher()
            # The teacher sees exactly the student's inputs (attention mask, position ids of packed sequences).
            with torch.no_grad(), self.accelerator.autocast():
                teacher_logits = self.teacher_model(**inputs).logits

        out = salt_loss(
            outputs.logits,
            shift_labels,
            teacher_logits,
            nll_weight=1.0 - w,
            kd_weight=w,
            divergence=self.args.kd_divergence,
            temperature=self.args.kd_temperature,
            beta=self.args.kd_jsd_beta,
            vocab_size=self.kd_vocab_size if teacher_logits is not None else None,
            chunk_size=self.args.kd_chunk_size,
            compile=self.args.kd_compile,
        )
        del teacher_logits

        if num_items_in_batch is None:
            denominator = out.num_tokens.clamp_min(1)
            loss = out.loss / denominator
        else:
            loss = out.loss / num_items_in_batch
            if self.args.average_tokens_across_devices:
                # `num_items_in_batch` counts the tokens of all processes, and DDP / DeepSpeed average the
                # gradients over processes: multiply back so the step equals one process holding the whole batch.
                loss = loss * self.accelerator.num_processes

        if training:
            kd_tokens = out.num_tokens if w > 0.0 else torch.zeros_like(out.num_tokens)
            self._metric_sums += torch.stack([out.nll, out.kd, kd_tokens, out.num_tokens]).to(self._metric_sums)
            self._last_kd_weight = w

        return (loss, outputs) if return_outputs else loss

    # ---- logging --------------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training logging step: every process gets here together
            sums = self.accelerator.reduce(self._metric_sums, reduction="sum").tolist()
            self._metric_sums.zero_()
            nll_sum, kd_sum, kd_tokens, tokens = sums
            logs["nll_loss"] = nll_sum / max(tokens, 1.0)
            logs["kd_loss"] = kd_sum / kd_tokens if kd_tokens > 0 else 0.0
            logs["kd_weight"] = self._last_kd_weight
        for key in [k for k in logs if k.endswith("_loss") and k.startswith("eval")]:
            # eval losses are the plain NLL per token (w = 0 in eval), comparable between SALT and the baseline
            logs[key[: -len("loss")] + "perplexity"] = math.exp(min(logs[key], 700.0))
        super().log(logs, start_time)
