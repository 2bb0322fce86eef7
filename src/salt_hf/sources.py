"""Pre-flight checks of model sources: what `from_pretrained` will load, read before anything is loaded or written.

A teacher given by its path is loaded only when the KD stage starts (after SALT_DS's scoring pass, or on a resume),
and a student or a checkpoint only once the data is ready: whatever is wrong with their folders would show late, after
the output folder exists. These checks read the config, the safetensors headers (the 8-byte length and the JSON after
it) and the files' sizes, never a tensor, so they cost milliseconds and run always. Each raises `ValueError` with a
message that names the file, the problem and the fix.

safetensors layout (https://github.com/huggingface/safetensors#format): an unsigned little-endian 64-bit header length
N, N bytes of JSON mapping each tensor's name to its dtype, shape and `data_offsets` [begin, end) relative to the byte
after the header, then the tensors' bytes, with nothing after the last tensor.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from huggingface_hub import is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import (
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

# Bytes per element of safetensors' dtypes (sub-byte types such as F4 are left out: their sizes are not checked).
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "C64": 8,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
# The safetensors library refuses larger headers (its MAX_HEADER_SIZE): a larger length means a damaged file.
MAX_HEADER_BYTES = 100_000_000
ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"
_CAUSAL_LM_CLASSES = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
RECOPY = "copy or download it again (an interrupted copy or download leaves such a file)"


def local_folder(name_or_path: str) -> Path | None:
    """
    The folder `from_pretrained(name_or_path)` reads: the path itself, or for a hub id while the hub is offline the
    snapshot in the local cache; None for a hub id that `from_pretrained` would download (nothing local to check).
    """
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    if not is_offline_mode():
        return None
    try:
        cached = try_to_load_from_cache(name_or_path, CONFIG_NAME)
    except HFValidationError:  # not a hub id either: the CLI's own check names it
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def check_model_source(
    name_or_path: str, *, trust_remote_code: bool = False, safetensors_only: bool = True
) -> PretrainedConfig | None:
    """
    Checks what `AutoModelForCausalLM.from_pretrained(name_or_path)` will load, without loading it: the config is a
    causal LM's and the weights are complete (`check_weights`). Returns the config (None for a hub id to be
    downloaded, which is left to `from_pretrained`).
    """
    folder = local_folder(name_or_path)
    if folder is None:
        return None
    if not (folder / CONFIG_NAME).is_file() and (folder / ADAPTER_CONFIG_NAME).is_file():
        # a PEFT adapter folder: transformers loads its base model from the adapter's config
        check_safetensors(folder / ADAPTER_WEIGHTS_NAME)
        return None
    config = check_causal_lm_config(folder, trust_remote_code=trust_remote_code)
    check_weights(folder, safetensors_only=safetensors_only)
    return config


def check_causal_lm_config(folder: Path, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The folder's config, which must be one `AutoModelForCausalLM` can build (or custom code it may run)."""
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise ValueError(
            f"{folder} has no {CONFIG_NAME}: not a model folder. Give the folder that save_pretrained wrote (it holds "
            f"{CONFIG_NAME} and the weights)."
        )
    try:
        fields = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}): {RECOPY}.") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{config_file} holds a JSON {type(fields).__name__}, not a model config: {RECOPY}.")
    if "AutoModelForCausalLM" in (fields.get("auto_map") or {}) and trust_remote_code:
        return AutoConfig.from_pretrained(folder, trust_remote_code=True)  # custom code: its own causal LM
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError) as err:
        raise ValueError(f"{config_file} does not load: {err}") from None
    architectures = fields.get("architectures") or []
    what = (
        f"{config_file} describes a {type(config).__name__} (model_type {config.model_type!r}; architectures: "
        f"{', '.join(architectures) or 'none named'})"
    )
    fix = "SALT trains and distils causal (decoder-only) language models such as Llama, Qwen2 or GPT-2: give one."
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"{what}, which AutoModelForCausalLM cannot load. {fix}")
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        # BERT-like families load as causal LMs only when the config says is_decoder (transformers warns otherwise)
        raise ValueError(f"{what}: an encoder that attends both ways (is_decoder is not set), not a causal LM. {fix}")
    if architectures and not any(_is_causal_lm_class(name) for name in architectures):
        raise ValueError(
            f"{what}: the saved model has no language-model head, so AutoModelForCausalLM would start one from random "
            f"weights. {fix}"
        )
    return config


def _is_causal_lm_class(name: str) -> bool:
    return name in _CAUSAL_LM_CLASSES or name.endswith(("ForCausalLM", "LMHeadModel"))


def check_weights(folder: Path, *, safetensors_only: bool = True) -> None:
    """
    The folder's weights are complete: `model.safetensors`, or every shard its index names, each with a whole
    header and exactly the bytes the header declares. Pickled weights (`pytorch_model.bin`) count only when
    `safetensors_only` is False, and then only their presence is checked.
    """
    single, index = folder / SAFE_WEIGHTS_NAME, folder / SAFE_WEIGHTS_INDEX_NAME
    if single.is_file():
        check_safetensors(single)
        return
    if index.is_file():
        check_sharded_safetensors(index)
        return
    pickled = [name for name in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME) if (folder / name).is_file()]
    if pickled and not safetensors_only:
        return
    if pickled:
        raise ValueError(
            f"{folder} holds its weights only as {pickled[0]} (pickle), and models are loaded from safetensors only "
            "(loading a pickle can run code). Convert it once: AutoModelForCausalLM.from_pretrained(folder)"
            ".save_pretrained(folder) writes model.safetensors beside it."
        )
    raise ValueError(
        f"{folder} has no weights: neither {SAFE_WEIGHTS_NAME} nor {SAFE_WEIGHTS_INDEX_NAME} is there. A folder "
        "written by save_pretrained holds one of them; copy the whole folder (a config alone is not a model)."
    )


def check_sharded_safetensors(index_file: Path) -> None:
    """Every shard the index names exists and is complete, and holds the tensors the index says it holds."""
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        problem = f"{type(err).__name__}: {err}"
        raise ValueError(f"{index_file} is not a valid safetensors index ({problem}): {RECOPY}.") from None
    missing = [name for name in shards if not (index_file.parent / name).is_file()]
    if missing:
        raise ValueError(
            f"{index_file.parent}: {len(missing)} of the {len(shards)} weight shards named by {index_file.name} are "
            f"missing ({', '.join(missing)}): copy the whole folder again."
        )
    for name in shards:
        tensors = check_safetensors(index_file.parent / name)
        absent = [key for key, shard in weight_map.items() if shard == name and key not in tensors]
        if absent:
            raise ValueError(
                f"{index_file.parent / name} lacks {len(absent)} of the tensors {index_file.name} places in it (e.g. "
                f"{absent[0]!r}): the shard belongs to another save; copy the whole folder again."
            )


def check_safetensors(path: Path) -> dict[str, Any]:
    """
    Reads `path`'s safetensors header (no tensor) and checks that the file is whole: a header that parses, every
    tensor's bytes inside the file and as many as its dtype and shape need, no bytes missing or left over. Returns the
    header's tensor entries.
    """
    if not path.is_file():
        raise ValueError(f"{path} is missing: {RECOPY}.")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(
                f"{path} is {size} bytes long, too short for a safetensors file: it is cut short; {RECOPY}."
            )
        header_len = int.from_bytes(prefix, "little")
        if header_len > MAX_HEADER_BYTES:
            raise ValueError(
                f"{path} does not start with a safetensors header (it is damaged or not safetensors): {RECOPY}."
            )
        if 8 + header_len > size:
            raise ValueError(
                f"{path} is cut short: its header declares {header_len:,} bytes but the file holds {size:,} bytes in "
                f"all; {RECOPY}."
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        ends = [_tensor_end(name, entry) for name, entry in tensors.items()]
    except (ValueError, UnicodeDecodeError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} has a damaged safetensors header ({err}): {RECOPY}.") from None
    data = size - 8 - header_len
    declared = max(ends, default=0)
    if declared > data:
        raise ValueError(
            f"{path} is cut short: its header declares {declared:,} bytes of tensors but the file holds {data:,} "
            f"({size:,} of {8 + header_len + declared:,} bytes); {RECOPY}."
        )
    if declared < data:
        raise ValueError(
            f"{path} holds {data - declared:,} bytes more than its header declares: the file is damaged; {RECOPY}."
        )
    return tensors


def _tensor_end(name: str, entry: dict[str, Any]) -> int:
    begin, end = (int(x) for x in entry["data_offsets"])
    need = DTYPE_BYTES.get(entry["dtype"])
    if need is not None and end - begin != need * math.prod(int(d) for d in entry["shape"]):
        raise ValueError(
            f"tensor {name!r}: {end - begin} bytes for a {entry['dtype']} tensor of shape {entry['shape']}"
        )
    if not 0 <= begin <= end:
        raise ValueError(f"tensor {name!r}: data_offsets {entry['data_offsets']}")
    return end


def check_checkpoint(folder: Path) -> None:
    """
    A Trainer checkpoint to resume from: its trainer state readable, every file at the size the completion marker
    lists (`salt_hf.checkpointing`; a plain Trainer's checkpoint has none), and its model weights complete.
    """
    from .checkpointing import COMPLETE_MARKER

    state = folder / "trainer_state.json"
    if not state.is_file():
        raise ValueError(
            f"{folder} has no trainer_state.json: not a checkpoint. Give a checkpoint-<step> folder of a run's output "
            "folder, or 'last' for the newest complete one."
        )
    try:
        int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{state} is damaged ({type(err).__name__}: {err}): the save was cut short. Resume from an earlier "
            "checkpoint, or pass 'last' for the newest complete one."
        ) from None
    marker = folder / COMPLETE_MARKER
    if marker.is_file():
        try:
            files = json.loads(marker.read_text(encoding="utf-8"))["files"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{marker} is damaged ({type(err).__name__}): resume from an earlier checkpoint."
            ) from None
        for name, size in files.items():
            path = folder / name
            found = path.stat().st_size if path.is_file() else None
            if found != size:
                now = "missing" if found is None else f"{found:,} bytes"
                raise ValueError(
                    f"{path} is {now} but was {size:,} bytes when the checkpoint was saved: it was changed "
                    "or cut short afterwards. Resume from an earlier checkpoint, or pass 'last' for the newest "
                    "complete one."
                )
    for name in (SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME):
        if (folder / name).is_file():
            check_safetensors(folder / name)
    if (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        check_sharded_safetensors(folder / SAFE_WEIGHTS_INDEX_NAME)
