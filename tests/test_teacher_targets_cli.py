"""salt-teacher-targets writes a store from salt-train's own arguments; salt-train reads it (--teacher_targets) without
loading the teacher, and refuses a store that does not fit the run: exit code 2, one line, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
from fixtures import make_llama
from test_cli import quick_args, saved_pair, snapshot, text_file

from salt_hf.cli import teacher_targets as targets_cli
from salt_hf.cli import train as train_cli
from salt_hf.targets import TargetStore


@pytest.fixture
def pair(tmp_path, tokenizer):
    student_dir, teacher_dir = saved_pair(tmp_path, tokenizer)
    return {"model_name_or_path": student_dir, "teacher_model_name_or_path": teacher_dir}


def precompute(tmp_path, pair, store="store", **extra) -> int:
    args = quick_args(tmp_path, out="unused", data_files=text_file(tmp_path), **{**pair, **extra})
    return targets_cli.main(args + ["--teacher_targets", str(tmp_path / store), "--targets_rows_per_shard", "4"])


def test_precompute_then_train_reads_the_store_without_loading_the_teacher(tmp_path, pair, teacher_loads):
    assert precompute(tmp_path, pair, targets_k=8) == 0
    store = TargetStore(tmp_path / "store")
    assert store.manifest.form == "sampled" and store.manifest.k == 8 and len(store.manifest.shards) > 1
    assert len(teacher_loads) == 1
    assert not (tmp_path / "unused").exists()  # the precompute writes the store only
    run = quick_args(tmp_path, data_files=text_file(tmp_path), kd_steps=2, teacher_targets=tmp_path / "store", **pair)
    assert train_cli.main(run) == 0
    assert len(teacher_loads) == 1  # named to check its fingerprint, never loaded
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    kd = [h for h in history if "kd_loss" in h]
    assert kd[0]["kd_loss"] > 1e-3 and kd[0]["teacher_nll"] > 0 and kd[-1]["kd_loss"] == 0.0
    # run again: the store is complete, nothing is recomputed or rewritten
    before = snapshot(tmp_path / "store")
    assert precompute(tmp_path, pair, targets_k=8) == 0 and snapshot(tmp_path / "store") == before


def assert_one_error_line(stderr: str, command: str, match: str) -> None:
    """The error is one line naming the mismatch (progress bars may precede it), with no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith(f"{command}: error:")]
    assert len(errors) == 1 and match in errors[0] and "Traceback" not in stderr, stderr[-800:]


def refused(tmp_path, capsys, pair, match: str, **extra) -> None:
    args = quick_args(tmp_path, data_files=text_file(tmp_path), kd_steps=2, teacher_targets=tmp_path / "store")
    args += [x for k, v in {**pair, **extra}.items() if v is not None for x in (f"--{k}", str(v))]
    store = snapshot(tmp_path / "store")
    assert train_cli.main(args) == 2
    assert_one_error_line(capsys.readouterr().err, "salt-train", match)
    assert not (tmp_path / "out").exists() and snapshot(tmp_path / "store") == store


def test_a_store_that_does_not_fit_the_run_is_refused(tmp_path, pair, tokenizer, texts, capsys):
    from salt_hf.data import train_bpe_tokenizer

    assert precompute(tmp_path, pair) == 0
    capsys.readouterr()
    other_data = tmp_path / "other.txt"
    other_data.write_text(open(text_file(tmp_path)).read()[::-1])
    refused(tmp_path, capsys, pair, "other training data", data_files=other_data)
    refused(tmp_path, capsys, pair, "drawn at temperature 1.0", kd_temperature=2.0)
    other_teacher = tmp_path / "other_teacher"
    make_llama(len(tokenizer), 16, 1, seed=5).save_pretrained(other_teacher)
    tokenizer.save_pretrained(other_teacher)
    refused(tmp_path, capsys, pair, "another teacher", teacher_model_name_or_path=other_teacher)
    other_student = tmp_path / "other_student"
    other_tok = train_bpe_tokenizer(texts[:2], vocab_size=len(tokenizer))
    make_llama(len(other_tok), 32, 2, seed=0).save_pretrained(other_student)
    other_tok.save_pretrained(other_student)
    refused(
        tmp_path,
        capsys,
        {**pair, "teacher_model_name_or_path": None},
        "another tokenizer",
        model_name_or_path=other_student,
    )
    refused(tmp_path, capsys, pair, "not a streamed", streaming="true")
    shard = tmp_path / "store" / TargetStore(tmp_path / "store").manifest.shards[0]["file"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    refused(tmp_path, capsys, pair, "cut or replaced")
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    refused(tmp_path, capsys, pair, "corrupt")
    shutil.copy(tmp_path / "store" / "manifest.json", tmp_path / "manifest.json")
    (tmp_path / "store" / "manifest.json").unlink()
    refused(tmp_path, capsys, pair, "not a complete store")


def test_precompute_refuses_bad_input_before_writing(tmp_path, pair, capsys):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "mine.txt").write_text("keep")
    cases = [
        ({}, "other files"),
        ({"targets_k": 300}, "--targets_k"),
        ({"streaming": "true"}, "--streaming"),
        ({"teacher_model_name_or_path": str(tmp_path / "nope")}, "no such folder"),
    ]
    for extra, match in cases:
        assert precompute(tmp_path, pair, **extra) == 2
        assert_one_error_line(capsys.readouterr().err, "salt-teacher-targets", match)
        assert snapshot(tmp_path / "store") == {"mine.txt": b"keep"}
