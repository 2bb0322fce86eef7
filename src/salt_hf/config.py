"""SALTConfig: the TrainingArguments of SALT. The only place a SALT default is written."""

from __future__ import annotations

import base64
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from accelerate.utils import is_deepspeed_available
from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from .losses import Divergence
from .schedules import KDMix, KDSchedule
from .speedups import LayerwiseDirection, SeqWarmupSchedule

# kd_steps="auto" (salt_hf.kd_stop), the default when neither kd_steps nor kd_ratio is given: the window of the
# catch-up test, and its floor and ceiling as fractions of the run. The measurements behind them and behind the
# default: benchmarks/regime/REPORT.md.
AUTO_WINDOW, AUTO_MIN_RATIO, AUTO_MAX_RATIO = 25, 0.05, 0.5
TeacherPlacement = Literal["replicate", "zero3"]
TEACHER_PLACEMENTS: tuple[str, ...] = get_args(TeacherPlacement)
LossImplementation = Literal["auto", "fused_linear", "logits"]
# The fields whose value must be one of a Literal's choices (the CLI's parser refuses others by itself).
_CHOICES = {
    "teacher_placement": TeacherPlacement,
    "kd_schedule": KDSchedule,
    "kd_mix": KDMix,
    "kd_divergence": Divergence,
    "loss_implementation": LossImplementation,
    "seq_warmup_schedule": SeqWarmupSchedule,
    "layerwise_lr_direction": LayerwiseDirection,
}


@dataclass
class SALTConfig(TrainingArguments):
    r"""
    [`~transformers.TrainingArguments`] for [`SALTTrainer`]: SALT, small-model-aided large-model training
    (Rawat et al., 2024, https://arxiv.org/abs/2410.18779).

    For the first `kd_steps` optimizer steps the loss is `(1 - w_t) * NLL + w_t * KD(teacher -> student)` with
    `w_t = kd_weight(step)` falling to 0 by `kd_schedule`; from then on it is the plain next-token loss and the teacher
    is released. README.md explains when it pays off; benchmarks/RESULTS.md holds the measurements behind each default.

    > Teacher

        teacher_model_name_or_path (`str`, *optional*):
            Path or hub id of the small teacher, loaded with `AutoModelForCausalLM.from_pretrained` when the trainer
            receives no `teacher_model`.
        teacher_model_init_kwargs (`dict` or `str`, *optional*):
            Keyword arguments for loading the teacher (e.g. `{"dtype": "bfloat16"}`); a JSON string on the CLI.
        teacher_placement (`str`, *optional*, defaults to `"replicate"`):
            `"replicate"`: every process holds the whole teacher on its device (a SALT teacher is the small model),
            also under ZeRO-3 and FSDP. `"zero3"`: the teacher is sharded across processes with DeepSpeed ZeRO-3
            inference (needs `deepspeed`; its config is derived from the student's DeepSpeed config), for teachers too
            large to replicate; its forward is then a collective run by every process on the same steps.
        teacher_targets (`str`, *optional*):
            A store of the teacher's targets written by `salt-teacher-targets` (`salt_hf.targets`): the KD term reads
            each packed row's stored targets by its index instead of running a teacher, and no teacher is loaded. A
            store of sampled ids gives the forward-KL gradient without bias; a top-K store is biased. Refused when it
            was made from other data, packing, tokenizer, teacher or temperature, or covers fewer rows than the
            training set.

    > Knowledge distillation

        kd_weight (`float`, *optional*, defaults to `0.5`):
            w, the initial KD weight in [0, 1]. 0 turns SALT off (plain `Trainer`).
        kd_steps (`int` or `"auto"`, *optional*):
            n_KD, the number of optimizer steps of the KD stage. Exclusive with `kd_ratio`. `"auto"` (what applies when
            neither `kd_steps` nor `kd_ratio` is given): the trainer
            ends the KD stage itself, at the first optimizer step from which the student's next-token loss, averaged
            over the last `kd_auto_window` steps' KD batches, is at or below the teacher's on the same tokens
            (`salt_hf.kd_stop.AutoKDStop`), but not before `kd_auto_min_ratio` nor after `kd_auto_max_ratio` of
            `max_steps`.
        kd_ratio (`float`, *optional*):
            n_KD as a fraction of the run's optimizer steps (rounded up). Exclusive with `kd_steps`; when neither is
            given, `kd_steps="auto"` applies.
        kd_auto_window (`int`, *optional*, defaults to `AUTO_WINDOW`):
            With `kd_steps="auto"`: how many optimizer steps the catch-up test averages over; under the linear
            schedules also the number of steps over which w falls to 0 once the test fires, unless
            `kd_auto_fall_ratio` is set.
        kd_auto_fall_ratio (`float`, *optional*):
            With `kd_steps="auto"` and a linear `kd_schedule`: the fraction of the run's optimizer steps (rounded up)
            over which w falls to 0 once the test fires (the KD stage's end then lies that far after the test).
        kd_auto_min_ratio (`float`, *optional*, defaults to `AUTO_MIN_RATIO`):
            With `kd_steps="auto"`: the earliest step at which the test may fire, as a fraction of the run's
            optimizer steps (rounded up; `max_steps`, or the steps of `num_train_epochs`).
        kd_auto_max_ratio (`float`, *optional*, defaults to `AUTO_MAX_RATIO`):
            With `kd_steps="auto"`: the step at which the KD stage ends if the test has not fired before, as a
            fraction of the run's optimizer steps.
        kd_schedule (`str`, *optional*, defaults to `"step"`):
            `"step"`, `"linear_decay"` or `"linear_ratio_decay"` (see `salt_hf.schedules.kd_weight`). With
            `kd_steps="auto"`, w stays at `kd_weight` until the KD stage's end is decided; `"step"` then drops it to
            0 and the linear schedules take it down over the next `kd_auto_window` steps.
        kd_mix (`str`, *optional*, defaults to `"convex"`):
            How the two terms combine at weight w: `"convex"`, `(1 - w) * NLL + w * KD` (the paper's form), or
            `"additive"`, `NLL + w / (1 - w) * KD`: the same balance with the NLL term at full weight, so that the
            loss's scale does not jump where the KD stage ends (see `salt_hf.schedules.loss_weights`).
        kd_divergence (`str`, *optional*, defaults to `"forward_kl"`):
            `"forward_kl"` KL(teacher || student), `"reverse_kl"` or `"jsd"`.
        kd_jsd_beta (`float`, *optional*, defaults to `0.5`):
            Mixture weight of the generalized JSD; 0 is forward and 1 reverse KL.
        kd_temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature tau > 0 of the KD term (multiplied by tau^2).
        kd_chunk_size (`int`, *optional*):
            Tokens per chunk of the fused loss; automatic by default (16 MiB per fp32 [chunk, vocab] temporary, and
            at least 256 tokens on the fused_linear path).
        kd_compile (`bool`, *optional*, defaults to `False`):
            Fuse the default KD term's passes over the vocabulary with `torch.compile` (the logits path).
        loss_implementation (`str`, *optional*, defaults to `"auto"`):
            How the loss meets the models' output layers (`salt_hf.losses.head`). `"fused_linear"`: the student and
            the teacher run without their output layers and the loss is computed from their last hidden states and
            output weights, chunk by chunk, so neither model's [tokens x vocab] logits are formed, in the KD stage
            and after it. `"logits"`: the loss is computed on the logits of both models' forwards. `"auto"`:
            `"fused_linear"` where the models qualify (a plain linear output layer whose output the model's forward
            leaves as it is, soft-caps or scales in a known way; checked when the trainer is built and against the
            model's own logits at the first step), else `"logits"`, with a log line saying why. An explicit
            `"fused_linear"` raises before training when a model does not qualify, and falls back like `"auto"` when
            the first step's comparison fails. Evaluation that returns logits uses `"logits"`. The fused path runs
            under DDP, DeepSpeed ZeRO, FSDP2, `torch_compile` and `use_liger_kernel`; under FSDP1 and the
            `torch_compile_mode`s that capture CUDA graphs it falls back.

    > SALT_DS (data selection)

        kd_data_selection (`bool`, *optional*, defaults to `False`):
            SALT_DS: the teacher scores every training sequence before training (`salt_hf.selection`, cached) and the
            KD stage draws its batches from the highest-scoring ones; from n_KD on, the whole dataset. Needs
            `max_steps > 0` and a map-style dataset.
        kd_select_fraction (`float`, *optional*, defaults to `0.75`):
            Fraction of the training sequences the KD stage draws from.
        kd_select_top_k (`int`, *optional*, defaults to `10`):
            A token counts when its label is among the teacher's top-k predictions.
        kd_select_drop_top (`float`, *optional*, defaults to `0.0`):
            Fraction of the highest-scoring sequences skipped before selecting (drops likely noise).
        kd_select_batch_size (`int`, *optional*):
            Sequences per teacher forward while scoring; `per_device_eval_batch_size` by default.
        kd_select_max_sequences (`int`, *optional*):
            Score (and select from) only a seeded random subset of this many sequences.
        kd_select_cache_dir (`str`, *optional*):
            Folder of the score cache; `<HF datasets cache>/salt_hf_scores` by default.

    > Speed-ups that stack with SALT

        seq_warmup_steps (`int`, *optional*, defaults to `0`):
            Sequence-length warmup (`salt_hf.speedups`): for the first optimizer steps each packed row of T tokens is
            split into T / L rows of L tokens, L growing from `seq_warmup_start_length` to T at this step. 0: off.
        seq_warmup_schedule (`str`, *optional*, defaults to `"linear"`):
            `"linear"` or `"doubling"` (see `salt_hf.speedups.seq_length_at`).
        seq_warmup_start_length (`int`, *optional*, defaults to `64`):
            Row length at step 0; must divide the training rows' length.
        layerwise_lr_decay (`float`, *optional*, defaults to `1.0`):
            Layer-wise learning rates: each layer's rate is this factor times the next one's, in (0, 1]; 1 is off.
        layerwise_lr_direction (`str`, *optional*, defaults to `"top_down"`):
            `"top_down"`: the output head keeps `learning_rate`, lower layers get less. `"bottom_up"`: the reverse.

    > Preemption

        save_on_sigterm (`bool`, *optional*, defaults to `False`):
            On SIGTERM, finish the current optimizer step, save a checkpoint on every process and stop training
            (`salt_hf.checkpointing.SaveOnSigterm`). salt-train turns it on unless it is passed.
    """

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["teacher_model_init_kwargs"]

    # ---- teacher ----
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Path or hub id of the small teacher model (used when the trainer gets no teacher_model)."},
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": 'Keyword arguments for loading the teacher, e.g. \'{"dtype": "bfloat16"}\'.'},
    )
    teacher_placement: TeacherPlacement = field(
        default="replicate",
        metadata={"help": "'replicate': the whole teacher on every process; 'zero3': sharded with DeepSpeed ZeRO-3."},
    )
    teacher_targets: str | None = field(
        default=None,
        metadata={
            "help": "Folder of stored teacher targets (written by salt-teacher-targets): the KD term reads them by "
            "packed-row index instead of running the teacher."
        },
    )

    # ---- knowledge distillation ----
    kd_weight: float = field(
        default=0.5,
        metadata={"help": "Initial KD weight w in [0, 1]; the loss is (1 - w_t) NLL + w_t KD. 0: SALT off."},
    )
    kd_steps: int | str | None = field(
        default=None,
        metadata={
            "help": "n_KD: optimizer steps of the KD stage, or 'auto' (it ends when the student has caught up with "
            "the teacher; what applies when neither kd_steps nor kd_ratio is set). Exclusive with kd_ratio."
        },
    )
    kd_ratio: float | None = field(
        default=None,
        metadata={"help": "n_KD as a fraction of max_steps. Exclusive with kd_steps."},
    )
    kd_auto_window: int = field(
        default=AUTO_WINDOW,
        metadata={"help": "kd_steps='auto': optimizer steps whose KD batches the catch-up test averages over."},
    )
    kd_auto_fall_ratio: float | None = field(
        default=None,
        metadata={
            "help": "kd_steps='auto' with a linear kd_schedule: the fraction of the run's steps over which w falls "
            "to 0 once the test fires (default: kd_auto_window steps)."
        },
    )
    kd_auto_min_ratio: float = field(
        default=AUTO_MIN_RATIO,
        metadata={
            "help": "kd_steps='auto': the earliest step the KD stage may end, as a fraction of the run's steps."
        },
    )
    kd_auto_max_ratio: float = field(
        default=AUTO_MAX_RATIO,
        metadata={"help": "kd_steps='auto': the latest step the KD stage ends, as a fraction of the run's steps."},
    )
    kd_schedule: KDSchedule = field(
        default="step",
        metadata={"help": "How the KD weight reaches 0 at n_KD (salt_hf.schedules); 'step' is the paper's recipe."},
    )
    kd_mix: KDMix = field(
        default="convex",
        metadata={
            "help": "How NLL and KD combine at weight w: 'convex' (1-w)*NLL + w*KD (the paper's) or 'additive' "
            "NLL + w/(1-w)*KD (the NLL term keeps full weight, so the loss's scale does not jump when KD ends)."
        },
    )
    kd_divergence: Divergence = field(
        default="forward_kl",
        metadata={"help": "KD divergence: forward_kl = KL(teacher || student) as in the paper; reverse_kl; jsd."},
    )
    kd_jsd_beta: float = field(
        default=0.5,
        metadata={"help": "Generalized JSD mixture weight in [0, 1] (0: forward KL, 1: reverse KL)."},
    )
    kd_temperature: float = field(
        default=1.0,
        metadata={"help": "KD softmax temperature tau > 0; the divergence is multiplied by tau^2."},
    )
    kd_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per chunk of the fused NLL+KD loss (bounds its extra memory); automatic if unset."},
    )
    kd_compile: bool = field(
        default=False,
        metadata={
            "help": "Compile the default KD term (forward KL, tau 1) with torch.compile (the first step compiles)."
        },
    )
    loss_implementation: LossImplementation = field(
        default="auto",
        metadata={
            "help": "'fused_linear': the loss from the last hidden states and output weights, never the [tokens x "
            "vocab] logits; 'logits': from the models' logits; 'auto': fused_linear where the models qualify."
        },
    )

    # ---- SALT_DS: the teacher chooses the sequences of the KD stage (salt_hf.selection) ----
    kd_data_selection: bool = field(
        default=False,
        metadata={"help": "SALT_DS: the KD stage draws from the sequences the teacher scores highest."},
    )
    kd_select_fraction: float = field(
        default=0.75,
        metadata={"help": "SALT_DS: fraction of the training sequences the KD stage draws from, in (0, 1]."},
    )
    kd_select_top_k: int = field(
        default=10,
        metadata={"help": "SALT_DS: a token is 'learnable' when its label is among the teacher's top-k (paper: 10)."},
    )
    kd_select_drop_top: float = field(
        default=0.0,
        metadata={"help": "SALT_DS: fraction skipped at the top of the ranking before selecting; fraction + it <= 1."},
    )
    kd_select_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "SALT_DS: sequences per teacher forward while scoring; per_device_eval_batch_size if unset."
        },
    )
    kd_select_max_sequences: int | None = field(
        default=None,
        metadata={
            "help": "SALT_DS: score and select from a seeded random subset of this many sequences (unset: all)."
        },
    )
    kd_select_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "SALT_DS: folder of the score cache, shared by all processes; <HF datasets cache> if unset."
        },
    )

    # ---- speed-ups that stack with SALT (salt_hf.speedups); LR schedules and optimizers are the Trainer's own ----
    seq_warmup_steps: int = field(
        default=0,
        metadata={"help": "Sequence-length warmup: optimizer steps over which rows grow to the full length. 0: off."},
    )
    seq_warmup_schedule: SeqWarmupSchedule = field(
        default="linear",
        metadata={"help": "How the row length grows: 'linear' (longest divisor under a line) or 'doubling'."},
    )
    seq_warmup_start_length: int = field(
        default=64,
        metadata={"help": "Row length at step 0 of the sequence-length warmup; must divide the packed row length."},
    )
    layerwise_lr_decay: float = field(
        default=1.0,
        metadata={"help": "Layer-wise learning rates: each layer's rate is decay times its neighbour's; 1: off."},
    )
    layerwise_lr_direction: LayerwiseDirection = field(
        default="top_down",
        metadata={"help": "'top_down': the output head at learning_rate; 'bottom_up': the embeddings at it."},
    )

    # ---- preemption (salt_hf.checkpointing) ----
    save_on_sigterm: bool = field(
        default=False,
        metadata={"help": "On SIGTERM, finish the optimizer step, save a checkpoint and stop (salt-train: on)."},
    )

    def __post_init__(self):
        self._check_teacher_kwargs_json()
        self._check_deepspeed_json()
        super().__post_init__()
        self._check_choices()
        self._check_teacher()
        self._check_kd()
        self._check_selection()
        self._check_speedups()
        self._check_preemption()

    def _check_teacher_kwargs_json(self) -> None:
        value = self.teacher_model_init_kwargs
        if isinstance(value, str) and value.startswith("{"):
            # TrainingArguments parses it; check first so that a malformed string is reported by its field name
            try:
                json.loads(value)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"teacher_model_init_kwargs={value!r} is not valid JSON ({err}); pass e.g. "
                    '\'{"dtype": "bfloat16"}\'.'
                ) from None

    def _check_deepspeed_json(self) -> None:
        """`deepspeed` as a path is read before TrainingArguments reads it, so that its errors name the field."""
        value = self.deepspeed
        if not isinstance(value, str):
            return
        if os.path.isdir(value):
            raise ValueError(f"deepspeed={value!r} is a folder: give the DeepSpeed JSON file in it.")
        if os.path.exists(value):
            try:
                with open(value, encoding="utf-8") as f:
                    config = json.load(f)
            except (ValueError, UnicodeDecodeError) as err:
                raise ValueError(
                    f"deepspeed={value!r} is not valid JSON ({err}): fix the file, or start from one of "
                    "deepspeed_configs/*.json."
                ) from None
            if not isinstance(config, dict):
                raise ValueError(f"deepspeed={value!r} holds a JSON {type(config).__name__}, not a DeepSpeed config.")
            return
        try:  # Accelerate also takes the config itself as a JSON or base64-encoded string
            text = value if value.lstrip().startswith("{") else base64.urlsafe_b64decode(value).decode("utf-8")
            if isinstance(json.loads(text), dict):
                return
        except (ValueError, UnicodeDecodeError):
            pass
        raise ValueError(
            f"deepspeed={value!r}: no such file. Give the path of a DeepSpeed JSON config (e.g. "
            "deepspeed_configs/zero3.json)."
        )

    def _check_choices(self) -> None:
        """Python callers are not stopped by the CLI parser's choices: check each Literal field here."""
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in get_args(choices):
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of {list(get_args(choices))}.")

    def _check_teacher(self) -> None:
        if isinstance(self.teacher_model_init_kwargs, str):
            # A string that is not JSON (TrainingArguments parses those starting with '{') is a user error.
            raise ValueError(
                f"teacher_model_init_kwargs={self.teacher_model_init_kwargs!r} is not a JSON object; pass e.g. "
                '\'{"dtype": "bfloat16"}\'.'
            )
        for key in ("dtype", "torch_dtype"):
            value = (self.teacher_model_init_kwargs or {}).get(key)
            if isinstance(value, str) and value != "auto" and not isinstance(getattr(torch, value, None), torch.dtype):
                raise ValueError(
                    f"teacher_model_init_kwargs[{key!r}]={value!r} is not a torch dtype: use e.g. 'bfloat16', "
                    "'float16', 'float32' or 'auto'."
                )
        self._check_teacher_targets()
        if self.teacher_placement == "zero3" and self.fsdp:
            raise ValueError(
                "teacher_placement='zero3' shards the teacher with DeepSpeed, which does not mix with an FSDP student "
                "(fsdp is set): use teacher_placement='replicate' or DeepSpeed ZeRO-3 for the student."
            )

    def _check_teacher_targets(self) -> None:
        if self.teacher_targets is None:
            return
        if not (self.kd_divergence == "forward_kl" or (self.kd_divergence, self.kd_jsd_beta) == ("jsd", 0.0)):
            raise ValueError(
                f"teacher_targets with kd_divergence={self.kd_divergence!r}: stored targets give an unbiased estimate "
                "of the forward KL only; use kd_divergence='forward_kl' or an online teacher."
            )
        if self.kd_data_selection:
            raise ValueError(
                "teacher_targets with kd_data_selection=True: SALT_DS scores the data with a teacher forward; run it "
                "with the online teacher, or turn kd_data_selection off."
            )
        if self.seq_warmup_steps > 0:
            raise ValueError(
                f"teacher_targets with seq_warmup_steps={self.seq_warmup_steps}: the stored targets were computed on "
                "whole rows, the warmup cuts them shorter; set seq_warmup_steps=0 or use an online teacher."
            )

    def _check_kd(self) -> None:
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"kd_weight={self.kd_weight} must be in [0, 1].")
        if self.kd_schedule == "linear_ratio_decay" and self.kd_weight == 1.0:
            raise ValueError(
                "kd_weight=1.0 with kd_schedule='linear_ratio_decay' gives an infinite KD/NLL ratio; use "
                "kd_weight < 1."
            )
        if self.kd_mix == "additive" and self.kd_weight == 1.0:
            raise ValueError(
                "kd_weight=1.0 with kd_mix='additive' gives an infinite KD weight (w / (1 - w)); use kd_weight < 1 "
                "or kd_mix='convex'."
            )
        if not 0.0 <= self.kd_jsd_beta <= 1.0:
            raise ValueError(f"kd_jsd_beta={self.kd_jsd_beta} must be in [0, 1].")
        if not (self.kd_temperature > 0 and math.isfinite(self.kd_temperature)):
            raise ValueError(f"kd_temperature={self.kd_temperature} must be a finite number > 0.")
        if self.kd_chunk_size is not None and self.kd_chunk_size < 1:
            raise ValueError(f"kd_chunk_size={self.kd_chunk_size} must be >= 1 (or unset for automatic).")
        self._check_kd_length()

    def _check_kd_length(self) -> None:
        if isinstance(self.kd_steps, str):
            self.kd_steps = _parse_kd_steps(self.kd_steps)
        if self.kd_auto:
            return self._check_kd_auto()
        if self.kd_auto_fall_ratio is not None:
            raise ValueError(
                f"kd_auto_fall_ratio={self.kd_auto_fall_ratio} applies only with kd_steps='auto'; with a fixed n_KD "
                "the linear schedules already fall over the whole KD stage. Unset it or use kd_steps='auto'."
            )
        if self.kd_steps is not None and self.kd_ratio is not None:
            raise ValueError(
                f"kd_steps={self.kd_steps} and kd_ratio={self.kd_ratio} are both set; set exactly one of them."
            )
        if self.kd_steps is not None and self.kd_steps < 0:
            raise ValueError(f"kd_steps={self.kd_steps} must be >= 0.")
        if self.kd_ratio is not None and not 0.0 <= self.kd_ratio <= 1.0:
            raise ValueError(f"kd_ratio={self.kd_ratio} must be in [0, 1].")
        if self.kd_steps is not None and self.max_steps > 0 and self.kd_steps > self.max_steps:
            raise ValueError(
                f"kd_steps={self.kd_steps} is beyond max_steps={self.max_steps}: the KD stage would never end. "
                "Lower kd_steps or use kd_ratio."
            )

    def _check_kd_auto(self) -> None:
        if self.kd_ratio is not None:
            raise ValueError(f"kd_steps='auto' and kd_ratio={self.kd_ratio} are both set; set exactly one of them.")
        if self.kd_auto_window < 1:
            raise ValueError(f"kd_auto_window={self.kd_auto_window} must be >= 1 optimizer step.")
        if not 0.0 <= self.kd_auto_min_ratio <= self.kd_auto_max_ratio <= 1.0:
            raise ValueError(
                f"kd_auto_min_ratio={self.kd_auto_min_ratio} and kd_auto_max_ratio={self.kd_auto_max_ratio} must "
                "satisfy 0 <= kd_auto_min_ratio <= kd_auto_max_ratio <= 1."
            )
        if self.kd_auto_fall_ratio is None:
            return
        if not 0.0 < self.kd_auto_fall_ratio <= 1.0:
            raise ValueError(f"kd_auto_fall_ratio={self.kd_auto_fall_ratio} must be in (0, 1].")
        if self.kd_schedule == "step":
            raise ValueError(
                f"kd_auto_fall_ratio={self.kd_auto_fall_ratio} sets how long w falls, but kd_schedule='step' drops it "
                "at once: use kd_schedule='linear_decay' or 'linear_ratio_decay', or unset kd_auto_fall_ratio."
            )

    @property
    def kd_auto(self) -> bool:
        """Whether the trainer decides where the KD stage ends: `kd_steps="auto"`, or neither `kd_steps` nor
        `kd_ratio` given (the default)."""
        return self.kd_steps == "auto" or (self.kd_steps is None and self.kd_ratio is None)

    def _check_selection(self) -> None:
        if not 0.0 < self.kd_select_fraction <= 1.0:
            raise ValueError(f"kd_select_fraction={self.kd_select_fraction} must be in (0, 1].")
        if not 0.0 <= self.kd_select_drop_top < 1.0 or self.kd_select_fraction + self.kd_select_drop_top > 1.0 + 1e-9:
            raise ValueError(
                f"kd_select_drop_top={self.kd_select_drop_top} must be in [0, 1) with kd_select_fraction + "
                f"kd_select_drop_top <= 1 (kd_select_fraction={self.kd_select_fraction})."
            )
        for name in ("kd_select_top_k", "kd_select_max_sequences", "kd_select_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be >= 1.")
        if self.kd_data_selection and self.max_steps <= 0:
            raise ValueError(
                "kd_data_selection=True needs max_steps > 0 (the KD stage's sample stream is laid out by optimizer "
                f"step); got max_steps={self.max_steps}. Set max_steps instead of num_train_epochs."
            )
        if self.kd_data_selection and self.teacher_placement == "zero3":
            raise ValueError(
                "kd_data_selection=True scores the data with a replicated teacher; teacher_placement='zero3' is not "
                "supported with it. Use teacher_placement='replicate'."
            )

    def _check_preemption(self) -> None:
        if not isinstance(self.save_on_sigterm, bool):
            raise ValueError(f"save_on_sigterm={self.save_on_sigterm!r} must be True or False.")

    def _check_speedups(self) -> None:
        """Checks of the speed-up fields and of the Trainer's LR-schedule arguments they are documented with."""
        if self.seq_warmup_steps < 0:
            raise ValueError(f"seq_warmup_steps={self.seq_warmup_steps} must be >= 0 (0 turns the warmup off).")
        if self.seq_warmup_start_length < 1:
            raise ValueError(f"seq_warmup_start_length={self.seq_warmup_start_length} must be >= 1.")
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise ValueError(f"layerwise_lr_decay={self.layerwise_lr_decay} must be in (0, 1] (1: off).")
        if self.layerwise_lr_decay < 1.0:
            optim = OptimizerNames(self.optim).value
            if optim in ("lomo", "adalomo") or optim.endswith("_layerwise"):
                raise ValueError(
                    f"layerwise_lr_decay={self.layerwise_lr_decay} sets a learning rate per parameter group, which "
                    f"optim={optim!r} does not use (it steps inside the backward pass): choose another optim or "
                    "layerwise_lr_decay=1."
                )
            if self.deepspeed and "optimizer" in self.hf_deepspeed_config.config:
                raise ValueError(
                    f"layerwise_lr_decay={self.layerwise_lr_decay} needs the Trainer to build the optimizer, but the "
                    "DeepSpeed config defines one (its 'optimizer' section): remove that section, the Trainer then "
                    "builds `optim` with the layer-wise groups and DeepSpeed wraps it."
                )
        # The Trainer's schedulers read these from lr_scheduler_kwargs only when training starts: check them now.
        kwargs = self.lr_scheduler_kwargs or {}
        if self.lr_scheduler_type == SchedulerType.WARMUP_STABLE_DECAY and "num_decay_steps" not in kwargs:
            raise ValueError(
                "lr_scheduler_type='warmup_stable_decay' needs lr_scheduler_kwargs with num_decay_steps (the length "
                "of the final decay, e.g. 10-20% of max_steps), e.g. '{\"num_decay_steps\": 2000}'."
            )
        if self.lr_scheduler_type == SchedulerType.COSINE_WITH_MIN_LR and not {"min_lr", "min_lr_rate"} & set(kwargs):
            raise ValueError(
                "lr_scheduler_type='cosine_with_min_lr' needs lr_scheduler_kwargs with min_lr_rate (the floor as a "
                "fraction of each group's learning rate) or min_lr, e.g. '{\"min_lr_rate\": 0.1}'."
            )

    def resolve_kd_steps(self, max_steps: int) -> int:
        """n_KD for a run of `max_steps` optimizer steps (`kd_ratio` is rounded up, like `warmup_ratio`); with
        `kd_steps="auto"` the latest step at which the KD stage ends (its ceiling)."""
        if self.kd_auto:
            return steps_of(self.kd_auto_max_ratio, max_steps)
        if self.kd_steps is not None:
            return self.kd_steps
        return steps_of(self.kd_ratio, max_steps)


def steps_of(ratio: float, max_steps: int) -> int:
    """A fraction of a run in optimizer steps, rounded up like `warmup_ratio`."""
    # round first: 0.07 * 100 is 7.000000000000001 in floating point and must give 7, not 8
    return math.ceil(round(ratio * max_steps, 9))


def _parse_kd_steps(value: str) -> int | str:
    """kd_steps as the CLI hands it over (a string): 'auto' or a whole number."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"kd_steps={value!r} must be a whole number of optimizer steps or 'auto'.") from None


def as_salt_config(args: SALTConfig | None) -> SALTConfig:
    """`args` checked for `SALTTrainer`: a SALTConfig (a default one for None) whose optional parts are installed."""
    if args is None:
        return SALTConfig(output_dir="trainer_output")
    if not isinstance(args, SALTConfig):
        raise TypeError(
            f"SALTTrainer needs a SALTConfig as args, got {type(args).__name__}: use SALTConfig(...) with the "
            "same fields (it subclasses TrainingArguments)."
        )
    if args.kd_weight > 0.0 and args.teacher_placement == "zero3" and not is_deepspeed_available():
        raise ImportError(
            "teacher_placement='zero3' shards the teacher with DeepSpeed, which is not installed: "
            "pip install 'salt_hf[deepspeed]' (or use teacher_placement='replicate')."
        )
    return args
