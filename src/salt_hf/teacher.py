"""The teacher: one `Teacher` object owns its source, loading, placement, forward, fingerprint and release.

The module-level functions below are its parts (loading without disturbing the student's DeepSpeed / FSDP set-up,
compatibility checks against the student, the ZeRO-3 inference config); `Teacher` strings them together so the
trainer keeps one attribute and the lifecycle callback calls public methods only.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
from collections.abc import Iterator
from typing import Any

import torch
from accelerate.logging import get_logger
from accelerate.utils import release_memory
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from .sources import check_model_source

logger = get_logger(__name__)


def _resolve_dtype_kwargs(init_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(init_kwargs or {})
    for key in ("dtype", "torch_dtype"):
        value = kwargs.get(key)
        if isinstance(value, str) and value != "auto":
            if not isinstance(getattr(torch, value, None), torch.dtype):
                raise ValueError(
                    f"teacher_model_init_kwargs[{key!r}]={value!r} is not a torch dtype (e.g. 'bfloat16')."
                )
            kwargs[key] = getattr(torch, value)
    return kwargs


@contextlib.contextmanager
def _loading_context(zero3_config: dict[str, Any] | None) -> Iterator[None]:
    """
    Decides how `from_pretrained` places the teacher's weights on this process, whatever the student's setup says.

    transformers partitions weights at load time (`deepspeed.zero.Init`) whenever a ZeRO-3 `HfDeepSpeedConfig` is alive
    (a `SALTConfig(deepspeed=...)` of stage 3 keeps one), and under FSDP with `FSDP_CPU_RAM_EFFICIENT_LOADING` it loads
    weights on the local main process only, leaving the others on the meta device for FSDP to broadcast. Neither fits
    a teacher that no ZeRO/FSDP wrapper will ever own. With `zero3_config=None` the whole teacher is loaded on every
    process; with a ZeRO-3 config it is partitioned at load with that config (then handed to `deepspeed.initialize`).
    """
    # transformers (>=5.20,<6) exposes no switch for this: it reads one module-level weak reference, which we swap for
    # the duration of the load and restore afterwards, so the student's configuration is left exactly as it was.
    from transformers.integrations import deepspeed as hf_deepspeed

    previous_ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    previous_fsdp = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")
    keep_alive = None
    try:
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
        if zero3_config is None:
            hf_deepspeed.unset_hf_deepspeed_config()
        else:
            keep_alive = hf_deepspeed.HfDeepSpeedConfig(zero3_config)  # sets the module's weak reference to itself
        yield
    finally:
        del keep_alive
        hf_deepspeed._hf_deepspeed_config_weak_ref = previous_ref
        if previous_fsdp is None:
            os.environ.pop("FSDP_CPU_RAM_EFFICIENT_LOADING", None)
        else:
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = previous_fsdp


def load_teacher(
    name_or_path: str, init_kwargs: dict[str, Any] | None = None, zero3_config: dict[str, Any] | None = None
) -> PreTrainedModel:
    """
    Loads a causal-LM teacher with `from_pretrained` (safetensors only unless the kwargs say otherwise): whole on this
    process by default, even under a ZeRO-3 or FSDP student; partitioned at load when a ZeRO-3 `zero3_config` is given
    (see `zero3_inference_config`).
    """
    kwargs = {"use_safetensors": True, **_resolve_dtype_kwargs(init_kwargs)}
    with _loading_context(zero3_config):
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def load_teacher_config(name_or_path: str, init_kwargs: dict[str, Any] | None = None) -> PretrainedConfig:
    trust = bool((init_kwargs or {}).get("trust_remote_code", False))
    return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust)


# Any of these in a folder means it holds a tokenizer; without one, AutoTokenizer may still build an empty tokenizer of
# the config's model type (a handful of special tokens), which is no tokenizer to compare with.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def load_teacher_tokenizer(name_or_path: str, init_kwargs: dict[str, Any] | None = None):
    """The teacher's tokenizer when its folder has one, else None (then only the vocabulary sizes are compared)."""
    if os.path.isdir(name_or_path) and not any(os.path.isfile(os.path.join(name_or_path, f)) for f in TOKENIZER_FILES):
        return None
    trust = bool((init_kwargs or {}).get("trust_remote_code", False))
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust)
    except (OSError, ValueError, TypeError):
        return None


def output_vocab_size(model_or_config: PreTrainedModel | PretrainedConfig) -> int:
    """Rows of the output embedding (what the logits' last dimension will be)."""
    if isinstance(model_or_config, PreTrainedModel) or hasattr(model_or_config, "get_output_embeddings"):
        head = model_or_config.get_output_embeddings()
        if head is not None and getattr(head, "weight", None) is not None and head.weight.ndim == 2:
            # Under ZeRO-3 a partitioned weight is empty; its full shape is kept in ds_shape.
            shape = getattr(head.weight, "ds_shape", head.weight.shape)
            return int(shape[0])
        model_or_config = model_or_config.config
    return int(model_or_config.get_text_config().vocab_size)


def check_tokenizers_match(student_tokenizer, teacher_tokenizer) -> None:
    """KD compares distributions token by token: both models must use the very same token ids."""
    if student_tokenizer is None or teacher_tokenizer is None:
        return
    if not (hasattr(student_tokenizer, "get_vocab") and hasattr(teacher_tokenizer, "get_vocab")):
        return
    sv, tv = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if sv == tv:
        return
    only_s = len(set(sv.items()) - set(tv.items()))
    only_t = len(set(tv.items()) - set(sv.items()))
    raise ValueError(
        f"The teacher's tokenizer differs from the student's ({len(tv)} vs {len(sv)} tokens; {only_s} student and "
        f"{only_t} teacher (token, id) pairs have no match). Token-level KD needs one tokenizer: use a teacher "
        "trained with the student's tokenizer."
    )


def resolve_kd_vocab_size(student_vocab: int, teacher_vocab: int, tokenizer=None) -> int:
    """
    The vocabulary over which KD is computed. Members of one family often pad their embedding matrices to different
    sizes (151,936 vs 152,064 rows for one tokenizer): the rows beyond the tokenizer are never a label, so the
    distributions are compared over the real vocabulary, `len(tokenizer)`, or, without a tokenizer, the smaller size.
    """
    if tokenizer is not None and hasattr(tokenizer, "__len__"):
        real = len(tokenizer)
        if real > min(student_vocab, teacher_vocab):
            raise ValueError(
                f"The tokenizer has {real} tokens but the student's output embedding has {student_vocab} rows and the "
                f"teacher's {teacher_vocab}: resize the smaller model's embeddings (resize_token_embeddings) first."
            )
        return real
    if student_vocab != teacher_vocab:
        logger.warning(
            f"Student ({student_vocab}) and teacher ({teacher_vocab}) output vocabularies differ and no tokenizer was "
            f"given: distilling over the first {min(student_vocab, teacher_vocab)} tokens. Pass processing_class to "
            "use the tokenizer's real size.",
            main_process_only=True,
        )
    return min(student_vocab, teacher_vocab)


def num_parameters(model: torch.nn.Module) -> int:
    """Parameters of a model, counted at full size also when ZeRO-3 has partitioned them (then `numel()` is 0)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def is_zero3_partitioned(model: torch.nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 has partitioned the model's weights (created under `zero.Init` or already wrapped)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _hidden_size(config: PretrainedConfig) -> int | None:
    text = config.get_text_config()
    sizes = getattr(text, "hidden_sizes", None)
    return max(sizes) if sizes else getattr(text, "hidden_size", None)


def zero3_inference_config(
    teacher_config: PretrainedConfig,
    micro_batch_size: int,
    trainer_ds_config: dict[str, Any] | None = None,
    bf16: bool = False,
    fp16: bool = False,
) -> dict[str, Any]:
    """
    The DeepSpeed config that shards a frozen teacher with ZeRO-3 for inference (no optimizer, no scheduler).

    Derived from the student's DeepSpeed config when there is one (its precision and parameter offload, so a teacher of
    a `zero3_offload` run is offloaded too), else from the `TrainingArguments` flags. Bucket sizes follow the teacher's
    hidden size, as transformers' "auto" values do for the student: parameters below `10 * hidden` elements (norms,
    biases) stay whole on every process, which avoids one all-gather per tiny tensor.
    """
    trainer_ds_config = trainer_ds_config or {}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    for key, flag in (("bf16", bf16), ("fp16", fp16)):
        enabled = trainer_ds_config.get(key, {}).get("enabled", "auto")
        config[key] = {"enabled": flag if enabled == "auto" else bool(enabled)}
    zero: dict[str, Any] = {"stage": 3}
    offload = trainer_ds_config.get("zero_optimization", {}).get("offload_param")
    if offload and offload.get("device", "none") != "none":
        zero["offload_param"] = copy.deepcopy(offload)
    hidden = _hidden_size(teacher_config)
    if hidden is not None:
        zero.update(
            reduce_bucket_size=hidden * hidden,
            stage3_prefetch_bucket_size=int(0.9 * hidden * hidden),
            stage3_param_persistence_threshold=10 * hidden,
        )
    config["zero_optimization"] = zero
    return config


def shard_teacher_zero3(teacher: torch.nn.Module, ds_config: dict[str, Any]) -> torch.nn.Module:
    """
    Wraps a frozen teacher in a DeepSpeed ZeRO-3 inference engine: each process keeps 1/world of its weights and
    all-gathers a layer's weights just before using them. Its forward is therefore a collective, which every process
    must run on the same steps (SALTTrainer decides from the global step alone). A teacher loaded under `zero.Init`
    keeps its partitioning; a whole one is partitioned here.
    """
    import deepspeed

    teacher.eval()
    teacher.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=teacher, config=ds_config)
    engine.eval()
    return engine


def prepare_teacher(teacher: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    """
    Frozen and in eval mode; moved to the process's device unless the user placed it with a device_map. Never wrapped
    by DDP or FSDP: every process holds the whole teacher on its own device (`accelerator.device`).
    """
    teacher.eval()
    teacher.requires_grad_(False)
    if getattr(teacher, "hf_device_map", None) is None:
        teacher.to(device)
    return teacher


def free_memory() -> None:
    gc.collect()
    release_memory()


class Teacher:
    """
    The small, already trained model that teaches the student during the KD stage.

    Args:
        source (`str` or `torch.nn.Module`):
            A local folder or hub id (its weights are loaded only when `place` or `fingerprint` needs them), or the
            model itself.
        init_kwargs (`dict`, *optional*):
            Keyword arguments for `from_pretrained` (e.g. `{"dtype": "bfloat16"}`).
        placement (`str`, *optional*, defaults to `"replicate"`):
            `"replicate"` (the whole teacher on every process) or `"zero3"` (sharded with DeepSpeed ZeRO-3 inference).
    """

    def __init__(self, source: str | torch.nn.Module, *, init_kwargs: dict | None = None, placement="replicate"):
        self.path = source if isinstance(source, str) else None
        self.module: torch.nn.Module | None = None if isinstance(source, str) else source
        self.init_kwargs = init_kwargs
        self.requested_placement = placement
        self.placement: str | None = None  # "replicate" or "zero3" once placed
        self.released = False

    @property
    def name(self) -> str:
        """The path or hub id, else the model's `name_or_path`, else its class name (for logs and model cards)."""
        if self.path is not None:
            return self.path
        return getattr(self.module, "name_or_path", None) or type(self.module).__name__

    def config(self) -> PretrainedConfig:
        """The teacher's config, read without loading its weights."""
        if self.module is not None:
            return self.module.config
        return load_teacher_config(self.path, self.init_kwargs)

    def check_source(self) -> None:
        """
        A teacher given by its path: the folder holds a causal LM's config and complete weights (`salt_hf.sources`),
        read without loading them, so that a damaged teacher is refused before training, not when the KD stage starts.
        """
        if self.path is None:
            return
        kwargs = self.init_kwargs or {}
        check_model_source(
            self.path,
            trust_remote_code=bool(kwargs.get("trust_remote_code", False)),
            safetensors_only=kwargs.get("use_safetensors", True) is not False,
        )

    def check_student(self, student: torch.nn.Module, tokenizer=None, teacher_tokenizer=None) -> int:
        """
        Checks that teacher and student share one tokenizer and returns the vocabulary KD is computed over. The
        teacher's tokenizer is read from its folder when it is given by path and `teacher_tokenizer` is None.
        """
        if self.path is not None and teacher_tokenizer is None:
            teacher_tokenizer = load_teacher_tokenizer(self.path, self.init_kwargs)
        tokenizer = tokenizer if hasattr(tokenizer, "get_vocab") else None
        check_tokenizers_match(tokenizer, teacher_tokenizer)
        teacher_vocab = output_vocab_size(self.module if self.module is not None else self.config())
        n_teacher, n_student = self.num_parameters(), num_parameters(student)
        if n_teacher > n_student:
            logger.warning(
                f"The teacher ({n_teacher:,} parameters) is larger than the student ({n_student:,}): this is "
                "ordinary knowledge distillation, not SALT, whose teacher is the smaller model.",
                main_process_only=True,
            )
        return resolve_kd_vocab_size(output_vocab_size(student), teacher_vocab, tokenizer)

    def num_parameters(self) -> int:
        """Parameters of the teacher; counted on the meta device (no weights read) when it is not loaded yet."""
        if self.module is not None:
            return num_parameters(self.module)
        trust = bool((self.init_kwargs or {}).get("trust_remote_code", False))
        # outside any ZeRO-3 / FSDP loading set-up of the student's: a plain module on the meta device
        with _loading_context(None), torch.device("meta"):
            return num_parameters(AutoModelForCausalLM.from_config(self.config(), trust_remote_code=trust))

    def load(self, zero3_config: dict[str, Any] | None = None) -> torch.nn.Module:
        """The teacher's module, loaded from its path on first use (whole, or partitioned with `zero3_config`)."""
        if self.module is None:
            logger.info(f"Loading the teacher from {self.path}", main_process_only=True)
            self.module = load_teacher(self.path, self.init_kwargs, zero3_config=zero3_config)
        return self.module

    def place(self, accelerator, args) -> torch.nn.Module | None:
        """
        Loads (if needed) and places the teacher, once: frozen on this process's device, or sharded with ZeRO-3.
        Runs on every process at the same step (with ZeRO-3, loading and wrapping are collectives). `args` is the
        run's `SALTConfig` (precision and micro-batch size of the ZeRO-3 config). Returns the placed module (None once
        released).
        """
        if self.released or self.placement is not None:
            return self.module
        placement = self._resolve_placement()
        zero3_config = self._zero3_config(accelerator, args) if placement == "zero3" else None
        self.load(zero3_config)
        if placement == "zero3":
            self.module = shard_teacher_zero3(self.module, zero3_config)
        else:
            prepare_teacher(self.module, accelerator.device)
        self.placement = placement
        return self.module

    def logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The teacher's logits for the student's inputs (attention mask, position ids), without a graph."""
        with torch.no_grad():
            return self.module(**inputs).logits

    def fingerprint(self) -> str:
        """A content hash: of the folder's files for a local path, else of the (loaded) weights."""
        from .selection.cache import model_fingerprint, path_fingerprint

        if self.path is not None and self.module is None:
            fingerprint = path_fingerprint(self.path, self.init_kwargs)
            if fingerprint is not None:
                return fingerprint
        return model_fingerprint(self.load())

    def release(self) -> bool:
        """Drops the teacher and frees its memory; it is never used again. True if a loaded teacher was dropped."""
        if self.released:
            return False
        had_module = self.module is not None
        if had_module and self.placement == "zero3":
            self.module.destroy()  # the DeepSpeed engine: removes its parameter-gathering hooks
        self.module = None
        self.released = True
        free_memory()
        return had_module

    def _resolve_placement(self) -> str:
        """The requested placement; a teacher built under an active ZeRO-3 config is already partitioned."""
        if self.requested_placement == "replicate" and self.module is not None and is_zero3_partitioned(self.module):
            logger.warning(
                "The teacher was created under DeepSpeed ZeRO-3 (`zero.Init`, e.g. by from_pretrained after "
                "SALTConfig(deepspeed=<stage 3>)), so its weights are partitioned: sharding it with ZeRO-3 "
                "inference. Pass the teacher's path, or load it before creating SALTConfig, to replicate it.",
                main_process_only=True,
            )
            return "zero3"
        return self.requested_placement

    def _zero3_config(self, accelerator, args) -> dict[str, Any]:
        plugin = accelerator.state.deepspeed_plugin
        return zero3_inference_config(
            self.config(),
            micro_batch_size=args.per_device_train_batch_size,
            trainer_ds_config=plugin.deepspeed_config if plugin is not None else None,
            bf16=args.bf16,
            fp16=args.fp16,
        )
