"""salt_hf.config: SALTConfig's defaults, its validation (every bad value named), the CLI, resolve_kd_steps."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import pytest
from transformers import HfArgumentParser, TrainingArguments

from salt_hf.config import SALTConfig
from salt_hf.losses import DIVERGENCES
from salt_hf.schedules import KD_SCHEDULES

SALT_FIELDS = [
    "teacher_model_name_or_path",
    "teacher_model_init_kwargs",
    "kd_weight",
    "kd_steps",
    "kd_ratio",
    "kd_schedule",
    "kd_divergence",
    "kd_jsd_beta",
    "kd_temperature",
    "kd_chunk_size",
    "loss_implementation",
]


def make(tmp_path, **kwargs) -> SALTConfig:
    return SALTConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


def parse(tmp_path, *args: str) -> SALTConfig:
    (config,) = HfArgumentParser(SALTConfig).parse_args_into_dataclasses(
        args=["--output_dir", str(tmp_path), "--report_to", "none", *args]
    )
    return config


# ---- 1. defaults -------------------------------------------------------------------------------------------------


def test_defaults(tmp_path):
    config = make(tmp_path)
    assert isinstance(config, TrainingArguments)
    assert config.teacher_model_name_or_path is None
    assert config.teacher_model_init_kwargs is None
    assert config.kd_weight == 0.5
    assert config.kd_steps is None
    assert config.kd_ratio is None
    assert config.kd_auto  # neither kd_steps nor kd_ratio given: the KD stage ends itself
    assert config.kd_schedule == "step"
    assert config.kd_divergence == "forward_kl"
    assert config.kd_jsd_beta == 0.5
    assert config.kd_temperature == 1.0
    assert config.kd_chunk_size is None
    assert config.loss_implementation == "auto"


def test_every_salt_field_has_help():
    fields = {f.name: f for f in dataclasses.fields(SALTConfig)}
    for name in SALT_FIELDS:
        assert fields[name].metadata.get("help"), name


def test_cli_choices_are_the_library_names():
    """The Literal choices of the config are exactly the schedules and divergences the library implements."""
    actions = {a.dest: a for a in HfArgumentParser(SALTConfig)._actions}
    assert sorted(actions["kd_schedule"].choices) == sorted(KD_SCHEDULES)
    assert sorted(actions["kd_divergence"].choices) == sorted(DIVERGENCES)


# ---- 2. every bad value raises an error that names the field and the value ---------------------------------------

# (kwargs, fragments the message must contain)
INVALID = [
    (dict(kd_weight=-0.1), ["kd_weight", "-0.1"]),
    (dict(kd_weight=1.5), ["kd_weight", "1.5"]),
    (dict(kd_weight=float("nan")), ["kd_weight", "nan"]),
    (dict(kd_temperature=0.0), ["kd_temperature", "0"]),
    (dict(kd_temperature=-1.0), ["kd_temperature", "-1"]),
    (dict(kd_temperature=float("inf")), ["kd_temperature", "inf"]),
    (dict(kd_jsd_beta=1.5), ["kd_jsd_beta", "1.5"]),
    (dict(kd_jsd_beta=-0.1), ["kd_jsd_beta", "-0.1"]),
    (dict(kd_steps=10, kd_ratio=0.1), ["kd_steps", "10", "kd_ratio", "0.1"]),
    (dict(kd_steps=-1), ["kd_steps", "-1"]),
    (dict(kd_ratio=1.5), ["kd_ratio", "1.5"]),
    (dict(kd_ratio=-0.2), ["kd_ratio", "-0.2"]),
    (dict(kd_steps=20, max_steps=10), ["kd_steps", "20", "max_steps", "10"]),
    (dict(kd_chunk_size=0), ["kd_chunk_size", "0"]),
    (dict(kd_chunk_size=-4), ["kd_chunk_size", "-4"]),
    (dict(kd_schedule="linear_ratio_decay", kd_weight=1.0), ["kd_weight", "1.0", "linear_ratio_decay"]),
    (dict(kd_mix="additive", kd_weight=1.0), ["kd_weight", "1.0", "additive"]),
    (dict(kd_mix="sum"), ["kd_mix", "sum"]),
    (dict(kd_schedule="cosine"), ["kd_schedule", "cosine"]),
    (dict(kd_divergence="kl"), ["kd_divergence", "kl"]),
    (dict(loss_implementation="liger"), ["loss_implementation", "liger"]),
    (dict(teacher_model_init_kwargs="dtype=bfloat16"), ["teacher_model_init_kwargs", "dtype=bfloat16"]),
]


@pytest.mark.parametrize(
    ("kwargs", "fragments"), INVALID, ids=["-".join(f"{k}={v}" for k, v in kw.items()) for kw, _ in INVALID]
)
def test_invalid_values_are_named(tmp_path, kwargs, fragments):
    with pytest.raises(ValueError) as info:
        make(tmp_path, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_malformed_json_teacher_kwargs_are_named(tmp_path):
    with pytest.raises(ValueError) as info:
        make(tmp_path, teacher_model_init_kwargs="{dtype: bfloat16}")
    assert "teacher_model_init_kwargs" in str(info.value), str(info.value)


VALID_EDGES = [
    dict(kd_weight=0.0),
    dict(kd_weight=1.0),
    dict(kd_weight=1.0, kd_schedule="linear_decay"),
    dict(kd_weight=0.99, kd_schedule="linear_ratio_decay"),
    dict(kd_jsd_beta=0.0, kd_divergence="jsd"),
    dict(kd_jsd_beta=1.0, kd_divergence="jsd"),
    dict(kd_ratio=0.0),
    dict(kd_ratio=1.0),
    dict(kd_steps=0),
    dict(kd_steps=10, max_steps=10),
    dict(kd_steps=1000),  # no max_steps: the run's length is known only from the epochs, at train time
    dict(kd_chunk_size=1),
    dict(kd_temperature=1e-3),
    dict(kd_divergence="reverse_kl"),
    dict(teacher_model_init_kwargs={"dtype": "bfloat16"}),
]


@pytest.mark.parametrize(
    "kwargs", VALID_EDGES, ids=["-".join(f"{k}={v}" for k, v in kw.items()) for kw in VALID_EDGES]
)
def test_valid_edges_are_accepted(tmp_path, kwargs):
    config = make(tmp_path, **kwargs)
    for key, value in kwargs.items():
        assert getattr(config, key) == value


def test_teacher_kwargs_json_string_becomes_a_dict(tmp_path):
    config = make(tmp_path, teacher_model_init_kwargs='{"dtype": "bfloat16", "attn_implementation": "eager"}')
    assert config.teacher_model_init_kwargs == {"dtype": "bfloat16", "attn_implementation": "eager"}


# ---- 3. the command line -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "value"), [("--kd_schedule", "cosine"), ("--kd_divergence", "kl")])
def test_cli_rejects_an_invalid_choice(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        parse(tmp_path, flag, value)
    assert info.value.code != 0
    assert value in capsys.readouterr().err


def test_cli_parses_salt_arguments(tmp_path):
    config = parse(
        tmp_path,
        "--teacher_model_init_kwargs",
        '{"dtype": "bfloat16", "low_cpu_mem_usage": true}',
        "--kd_weight",
        "0.3",
        "--kd_steps",
        "12",
        "--max_steps",
        "40",
        "--kd_schedule",
        "linear_ratio_decay",
        "--kd_divergence",
        "jsd",
        "--kd_jsd_beta",
        "0.1",
        "--kd_temperature",
        "2",
        "--kd_chunk_size",
        "256",
    )
    assert config.teacher_model_init_kwargs == {"dtype": "bfloat16", "low_cpu_mem_usage": True}
    assert config.kd_weight == 0.3
    assert config.kd_steps == 12 and isinstance(config.kd_steps, int)
    assert config.kd_schedule == "linear_ratio_decay"
    assert config.kd_divergence == "jsd"
    assert config.kd_jsd_beta == 0.1
    assert config.kd_temperature == 2.0
    assert config.kd_chunk_size == 256
    assert config.resolve_kd_steps(40) == 12


def test_cli_validates_values(tmp_path):
    with pytest.raises(ValueError, match="kd_weight=1.5"):
        parse(tmp_path, "--kd_weight", "1.5")
    with pytest.raises(ValueError, match="kd_ratio"):
        parse(tmp_path, "--kd_steps", "3", "--kd_ratio", "0.5")


# ---- 4. resolve_kd_steps -----------------------------------------------------------------------------------------


def exact_ceil(ratio: float, max_steps: int) -> int:
    """ceil(ratio * max_steps) with the ratio read as the decimal the user wrote."""
    return math.ceil(Fraction(repr(ratio)) * max_steps)


def test_kd_steps_wins(tmp_path):
    config = make(tmp_path, kd_steps=7)
    assert config.resolve_kd_steps(100) == 7
    assert config.resolve_kd_steps(7) == 7


@pytest.mark.parametrize(
    ("ratio", "max_steps", "expected"),
    [(0.25, 10, 3), (0.3, 10, 3), (0.2, 10, 2), (0.1, 1, 1), (0.5, 7, 4), (0.0, 100, 0), (1.0, 13, 13)],
)
def test_kd_ratio_rounds_up(tmp_path, ratio, max_steps, expected):
    assert make(tmp_path, kd_ratio=ratio).resolve_kd_steps(max_steps) == expected


@pytest.mark.parametrize(("ratio", "max_steps"), [(0.07, 100), (0.14, 100)])
def test_kd_ratio_rounds_up_without_float_error(tmp_path, ratio, max_steps):
    assert make(tmp_path, kd_ratio=ratio).resolve_kd_steps(max_steps) == exact_ceil(ratio, max_steps)


@pytest.mark.parametrize("max_steps", [1, 7, 10, 100, 1234])
def test_automatic_stop_when_neither_is_set(tmp_path, max_steps):
    config = make(tmp_path)
    assert config.kd_auto
    assert config.resolve_kd_steps(max_steps) == exact_ceil(config.kd_auto_max_ratio, max_steps)  # its ceiling
