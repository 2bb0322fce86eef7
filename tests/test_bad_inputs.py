"""
Bad input through salt-train, as a user makes it: a mistyped value, the wrong folder, a half-copied checkpoint, a
launch that cannot work. Every case must stop before anything is written: exit status 2, exactly one `error:` line
that names the problem, no traceback, and the output folder absent, or, where it held a run, unchanged byte for byte.

The cases run in this one process (`salt_hf.cli.train.main`) against real files: models written by save_pretrained
(whole, sharded, or with pickled weights), then cut short, emptied of shards or given the wrong config; a real run's
folder and checkpoints; real data and YAML files. One subprocess runs the installed `salt-train` on the issue's case.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fixtures import STDLIB, TINY_LLAMA, make_llama
from transformers import BertConfig, LlamaConfig, LlamaModel
from transformers.integrations import is_deepspeed_zero3_enabled

from salt_hf.checkpointing import COMPLETE_MARKER
from salt_hf.cli import train as train_cli
from salt_hf.launch import LAUNCHER_ENV

ROOT = Path(__file__).resolve().parents[1]
SEQ_LENGTH = 32


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cuts the file short, as an interrupted copy or download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def copy_of(world: dict[str, Path], name: str, source: str = "teacher") -> Path:
    path = world["root"] / name
    shutil.copytree(world[source], path)
    return path


def snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def cli_args(values: dict) -> list[str]:
    args = []
    for key, value in values.items():
        args += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    return args


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer, texts) -> dict[str, Path]:
    """Every file the cases point at: good models and data, their damaged copies, a real run with checkpoints."""
    from salt_hf.data import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("bad_inputs")
    w: dict[str, Path] = {"root": root}
    vocab = len(tokenizer)
    w["tokenizer"] = root / "tokenizer"
    tokenizer.save_pretrained(w["tokenizer"])
    w["tiny"] = root / "tiny.json"
    w["tiny"].write_text(json.dumps(TINY_LLAMA))
    w["corpus"] = root / "corpus.txt"
    w["corpus"].write_text((STDLIB / "textwrap.py").read_text() + "\n\n" + (STDLIB / "string.py").read_text())
    for name, model in (("teacher", make_llama(vocab, 16, 1, seed=1)), ("student", make_llama(vocab, 32, 2, seed=0))):
        w[name] = root / name
        model.save_pretrained(w[name])
        tokenizer.save_pretrained(w[name])

    # ---- damaged and wrong model folders ----
    w["truncated"] = copy_of(w, "truncated")
    truncate(w["truncated"] / "model.safetensors")
    w["student_truncated"] = copy_of(w, "student_truncated", "student")
    truncate(w["student_truncated"] / "model.safetensors", keep=0.9)
    w["garbage"] = copy_of(w, "garbage")
    (w["garbage"] / "model.safetensors").write_bytes(b"<html>404: Not Found</html>" * 10)
    w["no_weights"] = copy_of(w, "no_weights")
    (w["no_weights"] / "model.safetensors").unlink()
    w["bert"] = root / "bert"  # a BERT config and no weights (the case)
    BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(w["bert"])
    w["no_head"] = root / "no_head"  # the base model only, saved without its language-model head
    base = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaModel(base).save_pretrained(w["no_head"])
    w["pickled"] = copy_of(w, "pickled")
    (w["pickled"] / "model.safetensors").unlink()
    torch.save(make_llama(vocab, 16, 1, seed=1).state_dict(), w["pickled"] / "pytorch_model.bin")
    w["bad_config"] = copy_of(w, "bad_config")
    truncate(w["bad_config"] / "config.json")
    w["short_positions"] = root / "short_positions"
    make_llama(vocab, 16, 1, seed=1, max_pos=16).save_pretrained(w["short_positions"])
    w["other_tokenizer"] = root / "other_tokenizer"
    other = train_bpe_tokenizer(texts[:2], vocab_size=vocab)
    make_llama(len(other), 16, 1, seed=1).save_pretrained(w["other_tokenizer"])
    other.save_pretrained(w["other_tokenizer"])
    for name in ("sharded", "shard_missing", "shard_truncated"):
        w[name] = root / name
        make_llama(vocab, 16, 1, seed=1).save_pretrained(w[name], max_shard_size="40KB")
    shards = sorted(w["sharded"].glob("model-*.safetensors"))
    assert len(shards) >= 2, shards  # a real sharded save, its index naming each shard
    (w["shard_missing"] / shards[1].name).unlink()
    truncate(w["shard_truncated"] / shards[-1].name)

    # ---- data and YAML ----
    w["empty"] = root / "empty.txt"
    w["empty"].write_text("")
    w["jsonl"] = root / "rows.jsonl"
    w["jsonl"].write_text('{"content": "def f():\\n    return 1"}\n' * 20)
    w["yaml_typo"] = root / "typo.yaml"
    w["yaml_typo"].write_text("max_step: 10\n")
    w["yaml_broken"] = root / "broken.yaml"
    w["yaml_broken"].write_text("kd_weight: [0.5\nmax_steps: 10\n")
    w["yaml_list"] = root / "list.yaml"
    w["yaml_list"].write_text("- kd_weight\n- 0.5\n")
    w["yaml_bad_value"] = root / "bad_value.yaml"
    w["yaml_bad_value"].write_text("kd_weight: 2\n")

    # ---- a real run: its folder, its complete checkpoints, and damaged copies of one ----
    w["run"] = root / "run"
    run = {**base_values(w, "run"), "save_strategy": "steps", "save_steps": 1, "max_steps": 2}
    assert train_cli.main(cli_args(run)) == 0
    assert (w["run"] / "checkpoint-2" / COMPLETE_MARKER).is_file()
    w["ckpt_changed"] = copy_of(w, "ckpt_changed", "run")
    w["ckpt_changed"] = w["ckpt_changed"] / "checkpoint-2"
    truncate(w["ckpt_changed"] / "optimizer.pt")  # the marker lists its size at the save
    w["ckpt_plain"] = root / "ckpt_plain"  # a plain Trainer's checkpoint (no marker) whose weights were cut short
    shutil.copytree(w["run"] / "checkpoint-2", w["ckpt_plain"])
    (w["ckpt_plain"] / COMPLETE_MARKER).unlink()
    truncate(w["ckpt_plain"] / "model.safetensors")
    w["ckpt_state"] = root / "ckpt_state"
    shutil.copytree(w["run"] / "checkpoint-2", w["ckpt_state"])
    (w["ckpt_state"] / COMPLETE_MARKER).unlink()
    truncate(w["ckpt_state"] / "trainer_state.json")
    w["file_out"] = root / "not_a_folder"
    w["file_out"].write_text("a file")
    return w


def base_values(w: dict[str, Path], out: str) -> dict:
    """A two-step run of a new tiny Llama on a local file with a saved tokenizer: nothing slow before the checks."""
    return {
        "output_dir": w["root"] / out,
        "model_config": w["tiny"],
        "tokenizer_name_or_path": w["tokenizer"],
        "data_files": w["corpus"],
        "seq_length": SEQ_LENGTH,
        "per_device_train_batch_size": 2,
        "max_steps": 2,
        "kd_steps": 1,
        "logging_steps": 1,
        "report_to": "none",
        "use_cpu": "true",
        "save_strategy": "no",
        "disable_tqdm": "true",
    }


@dataclass
class Case:
    args: Callable[[dict[str, Path]], dict]  # flags over base_values
    fragment: str  # what the error line must say
    into_run: bool = False  # aimed at the real run's folder (which must stay as it was) instead of a new one


def teacher(name: str, **extra) -> Callable[[dict[str, Path]], dict]:
    return lambda w: {"teacher_model_name_or_path": w[name], **extra}


CASES: dict[str, Case] = {
    # ---- data ----
    "data file missing": Case(lambda w: {"data_files": w["root"] / "nope.txt"}, "nope.txt' not found"),
    "data file empty": Case(lambda w: {"data_files": w["empty"]}, "is empty (0 bytes)"),
    "data folder given as a file": Case(lambda w: {"data_files": w["root"]}, "is a directory, not a file"),
    "mixed data file types": Case(lambda w: {"data_files": [w["corpus"], w["jsonl"]]}, "mix file types"),
    "text column missing": Case(lambda w: {"data_files": w["jsonl"]}, "Text column 'text' not found"),
    "validation fraction of all": Case(lambda w: {"validation_fraction": 1.0}, "--validation_fraction 1.0"),
    "seq_length of one token": Case(lambda w: {"seq_length": 1}, "--seq_length 1"),
    # ---- YAML ----
    "yaml key mistyped": Case(lambda w: {"config": w["yaml_typo"]}, "Did you mean 'max_steps'"),
    "yaml not parseable": Case(lambda w: {"config": w["yaml_broken"]}, "not valid YAML"),
    "yaml not a mapping": Case(lambda w: {"config": w["yaml_list"]}, "expected a mapping"),
    "yaml file missing": Case(lambda w: {"config": w["root"] / "nope.yaml"}, "nope.yaml: no such file"),
    "yaml value out of range": Case(lambda w: {"config": w["yaml_bad_value"]}, "kd_weight=2"),
    # ---- SALT fields ----
    "kd_weight above 1": Case(lambda w: {"kd_weight": 1.5}, "kd_weight=1.5 must be in [0, 1]"),
    "kd_schedule unknown": Case(lambda w: {"kd_schedule": "cosine"}, "invalid choice: 'cosine'"),
    "kd_steps neither number nor auto": Case(lambda w: {"kd_steps": "often"}, "or 'auto'"),
    "kd_steps beyond max_steps": Case(teacher("teacher", kd_steps=50), "kd_steps=50 is beyond max_steps=2"),
    "kd_steps and kd_ratio": Case(lambda w: {"kd_ratio": 0.5}, "set exactly one of them"),
    "kd_temperature zero": Case(lambda w: {"kd_temperature": 0}, "kd_temperature=0.0 must be"),
    "kd_select_fraction zero": Case(lambda w: {"kd_select_fraction": 0}, "kd_select_fraction=0.0"),
    "teacher kwargs not JSON": Case(
        teacher("teacher", teacher_model_init_kwargs="{dtype: bf16}"), "teacher_model_init_kwargs='{dtype: bf16}'"
    ),
    "teacher dtype mistyped": Case(
        teacher("teacher", teacher_model_init_kwargs='{"dtype": "bfloat61"}'), "'bfloat61' is not a torch dtype"
    ),
    "selection on a stream": Case(
        teacher("teacher", kd_data_selection="true", streaming="true"), "it needs --streaming false"
    ),
    "warmup length not dividing": Case(
        lambda w: {"seq_warmup_steps": 2, "seq_warmup_start_length": 5}, "seq_warmup_start_length=5 must divide"
    ),
    # ---- model sources ----
    "teacher folder missing": Case(
        lambda w: {"teacher_model_name_or_path": w["root"] / "no_teacher"}, "no_teacher: no such folder"
    ),
    "teacher weights cut short": Case(teacher("truncated"), "model.safetensors is cut short"),
    "teacher weights not safetensors": Case(teacher("garbage"), "does not start with a safetensors header"),
    "teacher BERT config, no weights": Case(teacher("bert"), "describes a BertConfig"),
    "teacher config without weights": Case(teacher("no_weights"), "has no weights"),
    "teacher without LM head": Case(teacher("no_head"), "has no language-model head"),
    "teacher pickled weights only": Case(teacher("pickled"), "only as pytorch_model.bin"),
    "teacher config damaged": Case(teacher("bad_config"), "config.json is not valid JSON"),
    "teacher shard missing": Case(teacher("shard_missing"), "weight shards named by model.safetensors.index.json"),
    "teacher shard cut short": Case(teacher("shard_truncated"), "is cut short"),
    "teacher positions too few": Case(teacher("short_positions"), "beyond the teacher's 16 positions"),
    "teacher tokenizer differs": Case(teacher("other_tokenizer"), "The teacher's tokenizer differs"),
    "student weights cut short": Case(lambda w: {"model_name_or_path": w["student_truncated"]}, "is cut short"),
    "student positions too few": Case(
        lambda w: {"model_name_or_path": w["student"], "seq_length": 200}, "beyond the student's 128 positions"
    ),
    "student is a BERT config": Case(lambda w: {"model_name_or_path": w["bert"]}, "describes a BertConfig"),
    "tokenizer folder missing": Case(
        lambda w: {"tokenizer_name_or_path": w["root"] / "no_tok"}, "no_tok: no such folder"
    ),
    "model size unknown": Case(lambda w: {"model_config": "7b"}, "neither a named size"),
    # ---- resuming ----
    "resume folder missing": Case(lambda w: {"resume_from_checkpoint": w["root"] / "ckpt"}, "no such checkpoint"),
    "resume from a model folder": Case(lambda w: {"resume_from_checkpoint": w["student"]}, "not a checkpoint"),
    "resume from a changed checkpoint": Case(
        lambda w: {"resume_from_checkpoint": w["ckpt_changed"]}, "when the checkpoint was saved", into_run=True
    ),
    "resume weights cut short": Case(lambda w: {"resume_from_checkpoint": w["ckpt_plain"]}, "is cut short"),
    "resume state cut short": Case(lambda w: {"resume_from_checkpoint": w["ckpt_state"]}, "is damaged"),
    # ---- launch context ----
    "fsdp on one process": Case(lambda w: {"fsdp": "full_shard"}, "this run has one process"),
    "deepspeed file missing": Case(lambda w: {"deepspeed": w["root"] / "ds.json"}, "ds.json': no such file"),
    "deepspeed file not JSON": Case(lambda w: {"deepspeed": w["yaml_typo"]}, "is not valid JSON"),
    "deepspeed without launcher": Case(
        lambda w: {"deepspeed": ROOT / "deepspeed_configs" / "zero3.json"}, "needs a launcher"
    ),
    "zero3 teacher without launcher": Case(
        teacher("teacher", teacher_placement="zero3"), "teacher_placement='zero3' shards the teacher"
    ),
    "score cache under a file": Case(
        lambda w: {
            "teacher_model_name_or_path": w["teacher"],
            "kd_data_selection": "true",
            "kd_select_cache_dir": w["corpus"] / "scores",
        },
        "is a file, so no folder can be made there",
    ),
    # ---- output folders ----
    "run folder not overwritten": Case(lambda w: {}, "already holds files", into_run=True),
    "resume last without checkpoints": Case(
        lambda w: {"output_dir": w["tokenizer"], "resume_from_checkpoint": "last"}, "no complete checkpoint"
    ),
    "output_dir is a file": Case(lambda w: {"output_dir": w["file_out"]}, "is a file, not a folder"),
    "overwrite with a damaged teacher": Case(
        teacher("truncated", overwrite_output_dir="true"), "is cut short", into_run=True
    ),
    "resume last with a bad kd_weight": Case(
        lambda w: {"resume_from_checkpoint": "last", "kd_weight": -1}, "kd_weight=-1.0", into_run=True
    ),
}


@pytest.fixture
def no_launcher(monkeypatch):
    """The cases run as a plain `salt-train` does: no launcher's environment."""
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)


def run_case(values: dict, capsys) -> tuple[int, str]:
    """salt-train in this process: its exit status and what it wrote to stderr."""
    try:
        code = train_cli.main(cli_args(values))
    except SystemExit as exit_:  # argparse refuses a bad choice by itself
        code = exit_.code
    return code, capsys.readouterr().err


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_is_refused_before_anything_is_written(world, case_id, capsys, no_launcher):
    case = CASES[case_id]
    out = world["run"] if case.into_run else world["root"] / ("out_" + case_id.replace(" ", "_"))
    values = {**base_values(world, out.name), "output_dir": out, **case.args(world)}
    before = {path: snapshot(path) for path in (Path(values["output_dir"]), world["run"])}  # None: no folder
    code, err = run_case(values, capsys)
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2, (case_id, err[-3000:])
    assert len(lines) == 1, (case_id, err[-3000:])
    assert case.fragment in lines[0], (case_id, lines[0])
    assert "Traceback" not in err, (case_id, err[-3000:])
    # nothing written: the output folder still absent, or byte for byte what it was; the real run's folder too
    assert {path: snapshot(path) for path in before} == before, case_id
    gc.collect()
    assert not is_deepspeed_zero3_enabled(), case_id  # no DeepSpeed config of a refused run left active


def test_salt_train_on_a_half_copied_teacher(world, tmp_path):
    """The issue's case through the installed command: one error line, exit 2, no traceback, no output folder."""
    out = tmp_path / "out"
    values = {**base_values(world, "unused"), "output_dir": out, "teacher_model_name_or_path": world["truncated"]}
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    script = Path(sys.executable).with_name("salt-train")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "salt_hf.cli.train"]
    proc = subprocess.run([*cmd, *cli_args(values)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert line.startswith("salt-train: error: --teacher_model_name_or_path ") and "is cut short" in line
    assert "Traceback" not in proc.stderr and not out.exists()
