"""The command line: YAML configs, in-process and `accelerate launch` runs, fine-tuning, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import STDLIB, TINY_LLAMA, make_llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from salt_hf import SALTConfig, SALTTrainer
from salt_hf.cli import args as args_cli
from salt_hf.cli import demo as demo_cli
from salt_hf.cli import train as train_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_LLAMA
TINY_TEACHER = {**TINY, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}


def write_json(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def quick_args(tmp_path: Path, out: str = "out", **extra) -> list[str]:
    """A few-second run on a 300 kB slice of the built-in corpus with a tiny Llama."""
    args = {
        "output_dir": str(tmp_path / out),
        "model_config": write_json(tmp_path / "tiny.json", TINY),
        "tokenizer_vocab_size": 300,
        "max_corpus_bytes": 300_000,
        "seq_length": 32,
        "per_device_train_batch_size": 4,
        "max_steps": 4,
        "logging_steps": 2,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "max_eval_rows": 8,
        "report_to": "none",
        "use_cpu": "true",
        "save_strategy": "no",
        "disable_tqdm": "true",
    }
    args.update(extra)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_parses(config):
    classes = (*train_cli.ARG_CLASSES, demo_cli.DemoArguments)
    # --use_cpu: configs meant for GPUs ask for bf16, which TrainingArguments only accepts here on the CPU
    model_args, data_args, training_args, run_args, _ = train_cli.parse_args(
        ["--config", str(config), "--use_cpu", "true"], classes
    )
    assert isinstance(training_args, SALTConfig)
    assert data_args.seq_length > 0 and training_args.max_steps > 0
    # flags override the file
    _, _, overridden, *_ = train_cli.parse_args(
        ["--config", str(config), "--use_cpu", "true", "--max_steps", "7"], classes
    )
    assert overridden.max_steps == 7


def test_unknown_yaml_key_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_step: 10\n")
    assert train_cli.main(["--config", str(bad), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Unknown key 'max_step'" in err and "max_steps" in err
    assert not (tmp_path / "out").exists()


def test_train_in_process_saves_a_reloadable_student(tmp_path):
    assert train_cli.main(quick_args(tmp_path)) == 0
    out = tmp_path / "out"
    assert (out / "model.safetensors").exists() and (out / train_cli.RUN_CONFIG_NAME).exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("def main():\n    return 0\n", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size
    metrics = json.loads((out / "all_results.json").read_text())
    assert metrics["eval_loss"] > 0 and 0 <= metrics["eval_accuracy"] <= 1


def test_second_run_reuses_the_tokenisation_cache(tmp_path, caplog):
    import datasets

    cache = Path(datasets.config.HF_DATASETS_CACHE)
    assert train_cli.main(quick_args(tmp_path, "a", seed=3)) == 0
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.arrow")}
    assert train_cli.main(quick_args(tmp_path, "b", seed=3)) == 0
    after = {p: p.stat().st_mtime_ns for p in cache.rglob("*.arrow")}
    assert after == before  # no Arrow file written or rewritten: corpus and packing both came from the cache


def saved_pair(tmp_path: Path, tokenizer):
    """A student checkpoint and a smaller teacher, saved with save_pretrained, sharing the tokenizer."""
    student_dir, teacher_dir = tmp_path / "student_ckpt", tmp_path / "teacher_ckpt"
    make_llama(len(tokenizer), 32, 2, seed=0).save_pretrained(student_dir)
    make_llama(len(tokenizer), 16, 1, seed=1, head_scale=40.0).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(student_dir)
    tokenizer.save_pretrained(teacher_dir)
    return str(student_dir), str(teacher_dir)


def text_file(tmp_path: Path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text((STDLIB / "textwrap.py").read_text() + "\n\n" + (STDLIB / "string.py").read_text())
    return str(path)


@pytest.mark.parametrize("lora", [False, True])
def test_fine_tune_existing_checkpoint(tmp_path, tokenizer, lora):
    student_dir, teacher_dir = saved_pair(tmp_path, tokenizer)
    extra = {
        "model_name_or_path": student_dir,
        "teacher_model_name_or_path": teacher_dir,
        "data_files": text_file(tmp_path),
        "kd_steps": 2,
        "learning_rate": 0.01,
    }
    if lora:
        extra.update(use_lora="true", lora_r=4)
    assert train_cli.main(quick_args(tmp_path, **extra)) == 0
    out = tmp_path / "out"
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    kd = [h["kd_loss"] for h in history if "kd_loss" in h]
    assert kd[0] > 1e-3 and kd[-1] == 0.0  # KD in the first stage, none after n_KD
    if lora:
        assert (out / "adapter_model.safetensors").exists()
    else:
        reloaded = AutoModelForCausalLM.from_pretrained(out)
        original = AutoModelForCausalLM.from_pretrained(student_dir)
        assert any((a - b).abs().max() > 0 for a, b in zip(reloaded.parameters(), original.parameters(), strict=True))


# ---- bad input: a clear message, exit code 2, nothing on disk touched ----------------------------------------------


def bad_inputs(tmp_path: Path, tokenizer, texts):
    from salt_hf.data import train_bpe_tokenizer

    student_dir, teacher_dir = saved_pair(tmp_path, tokenizer)
    other_dir = tmp_path / "other_teacher"
    other = train_bpe_tokenizer(texts[:2], vocab_size=len(tokenizer))
    make_llama(len(other), 16, 1, seed=1).save_pretrained(other_dir)
    other.save_pretrained(other_dir)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"content": "def f():\\n    return 1"}\n' * 20)
    corpus = text_file(tmp_path)
    ft = {"model_name_or_path": student_dir, "data_files": corpus}
    return {
        "missing file": ({"data_files": str(tmp_path / "nope.txt")}, "nope.txt"),
        "empty file": ({"data_files": str(empty)}, "empty"),
        "missing text column": ({"data_files": str(jsonl)}, "content"),
        "seq_length beyond positions": ({**ft, "seq_length": 1000}, "positions"),
        "different tokenizers": ({**ft, "teacher_model_name_or_path": str(other_dir)}, "tokenizer differs"),
        "kd_steps beyond max_steps": ({**ft, "teacher_model_name_or_path": teacher_dir, "kd_steps": 50}, "max_steps"),
        "bad choice": ({"kd_schedule": "cosine"}, "cosine"),
        "kd_steps neither a number nor auto": ({"kd_steps": "often"}, "or 'auto'"),
    }


def test_every_bad_input_is_refused_before_training(tmp_path, tokenizer, texts, capsys):
    for name, (extra, fragment) in bad_inputs(tmp_path, tokenizer, texts).items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        try:
            code = train_cli.main(quick_args(tmp_path, out.name, **extra))
        except SystemExit as exit_:  # argparse rejects a bad choice itself
            code = exit_.code
        err = capsys.readouterr().err
        assert code == 2, name
        assert fragment in err, (name, err[-500:])
        assert not out.exists(), name


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"precious")
    before = snapshot(out)
    assert train_cli.main(quick_args(tmp_path)) == 2
    assert "already holds files" in capsys.readouterr().err
    assert snapshot(out) == before
    # a resume request on a folder without checkpoints is refused too, with nothing touched
    assert train_cli.main(quick_args(tmp_path, resume_from_checkpoint="last")) == 2
    assert "no complete checkpoint" in capsys.readouterr().err and snapshot(out) == before


@pytest.mark.parametrize("flag", ["teacher_model_name_or_path", "model_name_or_path", "tokenizer_name_or_path"])
def test_missing_model_folder_is_a_one_line_error(tmp_path, capsys, flag):
    missing = tmp_path / "no_such_model"
    out = tmp_path / "out"
    assert train_cli.main(quick_args(tmp_path, **{flag: str(missing)})) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("salt-train: error:")]
    assert f"--{flag} {missing}: no such folder" in line
    assert not out.exists() and not missing.exists()


def test_hub_id_offline_and_not_cached_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert train_cli.main(quick_args(tmp_path, teacher_model_name_or_path="someone/no-such-model")) == 2
    err = capsys.readouterr().err
    assert "--teacher_model_name_or_path someone/no-such-model: no such folder, and the hub is offline" in err
    assert not out.exists()


def test_hub_ids_are_left_to_from_pretrained_when_online(monkeypatch, tmp_path):
    monkeypatch.setattr(args_cli, "is_offline_mode", lambda: False)
    for hub_id in ("gpt2", "someone/some-model"):
        args_cli.check_model_source("--model_name_or_path", hub_id)
    args_cli.check_model_source("--model_name_or_path", str(tmp_path))  # an existing folder
    for path in ("./ckpt", "/no/such/ckpt", "~/ckpt", "runs/salt/final"):
        with pytest.raises(args_cli.InputError, match="no such folder"):
            args_cli.check_model_source("--model_name_or_path", path)


def test_a_bug_below_the_cli_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """A ValueError deep in training is a bug, not bad input: it propagates, and no "error:" line hides it."""

    def broken_compute_loss(self, *args, **kwargs):
        raise ValueError("injected")

    monkeypatch.setattr(SALTTrainer, "compute_loss", broken_compute_loss)
    with pytest.raises(ValueError, match="injected") as info:
        train_cli.main(quick_args(tmp_path))
    assert type(info.value) is ValueError
    assert any(entry.name == "broken_compute_loss" for entry in info.traceback)
    assert "salt-train: error" not in capsys.readouterr().err


def test_a_bug_below_the_cli_exits_non_zero_with_the_traceback(tmp_path):
    code = (
        "import sys\n"
        "from salt_hf import SALTTrainer\n"
        "from salt_hf.cli.train import main\n"
        "def broken(self, *args, **kwargs):\n"
        "    raise ValueError('injected')\n"
        "SALTTrainer.compute_loss = broken\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *quick_args(tmp_path, max_steps=1)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ValueError: injected" in proc.stderr
    assert "salt-train: error" not in proc.stderr


@pytest.mark.parametrize("kd_steps", ["2", "auto"])
def test_model_card_holds_the_salt_settings(tmp_path, tokenizer, kd_steps):
    student_dir, teacher_dir = saved_pair(tmp_path, tokenizer)
    extra = {"model_name_or_path": student_dir, "teacher_model_name_or_path": teacher_dir, "kd_steps": kd_steps}
    if kd_steps == "auto":  # the window is full after 2 steps, the floor is step 2: the test decides at 2 or 3
        extra.update(kd_auto_window=2, kd_auto_min_ratio=0.5, kd_auto_max_ratio=0.75)
    assert train_cli.main(quick_args(tmp_path, data_files=text_file(tmp_path), **extra)) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "generated_from_trainer" in card and "- salt" in card  # Trainer.create_model_card's card, our tags
    section = card[card.index("## SALT") :]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    stop = [h["kd_stop_step"] for h in state["log_history"] if "kd_stop_step" in h]
    assert stop == [] if kd_steps == "2" else len(stop) == 1 and 2 <= stop[0] <= 3
    for row in (
        f"| teacher | {teacher_dir} |",
        "| kd_weight (w) | 0.5 |",
        "| kd_schedule | step |",
        f"| kd_steps (n_KD) | {kd_steps} |",
        f"| KD stage ended at step | {stop[0] if stop else 2} |",
    ):
        assert row in section, (row, section)


def test_teacher_larger_than_student_warns(tmp_path, tokenizer, caplog):
    student_dir, _ = saved_pair(tmp_path, tokenizer)
    big = tmp_path / "big_teacher"
    make_llama(len(tokenizer), 64, 3, seed=2).save_pretrained(big)
    tokenizer.save_pretrained(big)
    args = quick_args(
        tmp_path,
        model_name_or_path=student_dir,
        data_files=text_file(tmp_path),
        teacher_model_name_or_path=str(big),
        kd_steps=1,
        max_steps=1,
    )
    with caplog.at_level("WARNING"):
        assert train_cli.main(args) == 0
    assert "ordinary knowledge distillation" in caplog.text


def test_resume_from_cli_checkpoint(tmp_path):
    args = quick_args(tmp_path, save_strategy="steps", save_steps=2)
    assert train_cli.main(args) == 0
    out = tmp_path / "out"
    final = snapshot(out)["model.safetensors"]
    assert train_cli.main(args + ["--resume_from_checkpoint", str(out / "checkpoint-2")]) == 0
    assert snapshot(out)["model.safetensors"] == final


def test_accelerate_launch_train_py(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(ROOT / "train.py"),
        *quick_args(tmp_path, max_steps=2),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.num_hidden_layers == 2


@pytest.mark.parametrize("selection", [False, True], ids=["salt", "salt_ds"])
def test_demo_writes_table_plot_and_summary(tmp_path, capsys, selection):
    teacher_json = write_json(tmp_path / "tiny_teacher.json", TINY_TEACHER)
    args = quick_args(
        tmp_path,
        teacher_config=teacher_json,
        teacher_max_steps=4,
        kd_ratio=0.5,
        learning_rate=0.01,
        kd_data_selection=str(selection).lower(),
        kd_select_top_k=256,
        kd_select_cache_dir=str(tmp_path / "scores"),
    )
    assert demo_cli.main(["--config", str(ROOT / "configs" / "demo.yaml"), *args]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["kd_data_selection"] is selection
    # only the SALT run scores the data (the teacher's and the baseline's runs have no selection)
    assert len(list((tmp_path / "scores").glob("*/scores.npy"))) == int(selection)
    runs = summary["runs"]
    assert set(runs) == {"teacher", "baseline", "salt", "kd_all"}
    assert summary["baseline_final_eval_loss"] == runs["baseline"]["eval_loss"]
    assert summary["teacher_final_eval_loss"] == runs["teacher"]["eval_loss"]
    # kd_ratio 0.5 of 4 steps for SALT; KD for the whole run is the control; no KD stage for the baseline
    assert (runs["salt"]["kd_end_step"], runs["kd_all"]["kd_end_step"], runs["baseline"]["kd_end_step"]) == (
        2,
        4,
        None,
    )
    for name in ("baseline", "salt", "kd_all"):
        passed = next((s for s, v in runs[name]["curve"] if v <= summary["teacher_final_eval_loss"]), None)
        assert runs[name]["passes_teacher_at_step"] == passed
    steps = [s for s, _ in runs["salt"]["curve"]]
    assert steps == sorted(set(steps)) and steps[-1] == 4
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "steps to baseline final" in table and "passes teacher" in table and "kd_all" in table
    for run in ("teacher", "baseline", "salt", "kd_all"):
        AutoModelForCausalLM.from_pretrained(out / run)


def test_gpt2_config_and_streaming_local_files(tmp_path):
    """A new GPT-2-style student from a JSON of config fields, trained on a streamed local file."""
    gpt2 = write_json(tmp_path / "gpt2.json", {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2})
    args = quick_args(tmp_path, model_config=gpt2, data_files=text_file(tmp_path), streaming="true")
    assert train_cli.main(args) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.model_type == "gpt2" and model.config.n_positions == 32


def test_kd_data_selection_from_the_cli_scores_then_reuses_the_cache(tmp_path, tokenizer, caplog):
    student_dir, teacher_dir = saved_pair(tmp_path, tokenizer)
    extra = {
        "model_name_or_path": student_dir,
        "teacher_model_name_or_path": teacher_dir,
        "data_files": text_file(tmp_path),
        "kd_steps": 2,
        "kd_data_selection": "true",
        "kd_select_top_k": 128,
        "kd_select_fraction": 0.3,
        "kd_select_cache_dir": str(tmp_path / "scores"),
    }
    with caplog.at_level("INFO", logger="salt_hf"):
        assert train_cli.main(quick_args(tmp_path, "a", **extra)) == 0
    assert "SALT_DS: scoring" in caplog.text and "SALT_DS selection" in caplog.text
    (cache,) = (tmp_path / "scores").iterdir()
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["top_k"] == 128 and meta["sequences"] > 0
    caplog.clear()
    with caplog.at_level("INFO", logger="salt_hf"):
        assert train_cli.main(quick_args(tmp_path, "b", **extra)) == 0
    assert "reusing the cached scores" in caplog.text and "SALT_DS: scoring" not in caplog.text
    history = json.loads((tmp_path / "b" / "trainer_state.json").read_text())["log_history"]
    assert [h["kd_weight"] for h in history if "kd_weight" in h][-1] == 0.0
