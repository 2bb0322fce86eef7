"""kd_steps="auto" (issue 17): the catch-up test, its floor and ceiling, its weight schedules, the trainer's use of it
(logging, teacher release, exact resume before / at / after the switch, SALT_DS) and the config's checks."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures import config, dataset, flat_params, save_teacher, tiny_salt_trainer
from transformers import TrainerCallback

from salt_hf import SALTConfig, SALTTrainer
from salt_hf.kd_stop import AutoKDStop
from salt_hf.schedules import auto_kd_end, auto_kd_weight, kd_weight

# ---- 1. the test on its own: fed [student_nll_sum, teacher_nll_sum, tokens] per step --------------------------------


def feed(stop: AutoKDStop, gaps: list[float], tokens: float = 100.0, teacher: float = 2.0, first: int = 1):
    """Feeds steps `first, first + 1, ...`, one per gap (student minus teacher loss per token); returns the step it
    decided on, or None."""
    for step, gap in enumerate(gaps, start=first):
        if stop.update(step, [(teacher + gap) * tokens, teacher * tokens, tokens]) is not None:
            return step
    return None


def test_fires_at_the_first_step_whose_window_has_caught_up():
    # window 3: the mean gap of steps 4-6 is (0.1 - 0.1 - 0.2) / 3 < 0, of steps 3-5 it is 0.2 / 3 > 0
    gaps = [1.0, 0.8, 0.3, 0.1, -0.1, -0.2, -0.3]
    stop = AutoKDStop(window=3, min_step=0, max_step=100)
    assert feed(stop, gaps) == 6
    reason = stop.reason
    assert reason["kd_stop_step"] == 6 and reason["kd_stop_at_ceiling"] == 0.0
    assert reason["kd_stop_gap"] == pytest.approx(-0.2 / 3)
    assert reason["kd_stop_teacher_nll"] == pytest.approx(2.0)
    assert reason["kd_stop_student_nll"] == pytest.approx(2.0 - 0.2 / 3)
    # once decided, nothing changes it
    assert stop.update(7, [0.0, 500.0, 100.0]) is None and stop.stop_step == 6


def test_a_single_lucky_step_does_not_fire_it():
    stop = AutoKDStop(window=4, min_step=0, max_step=100)
    assert feed(stop, [0.5, -0.6, 0.5, 0.4, 0.3]) is None  # every window's mean stays > 0


def test_never_before_the_floor():
    stop = AutoKDStop(window=2, min_step=5, max_step=100)
    assert feed(stop, [-1.0] * 10) == 5  # caught up from step 2 on: waits for the floor


def test_at_the_ceiling_at_the_latest():
    stop = AutoKDStop(window=2, min_step=0, max_step=4)
    assert feed(stop, [1.0] * 10) == 4  # never caught up: the ceiling ends it
    assert stop.reason["kd_stop_at_ceiling"] == 1.0 and stop.reason["kd_stop_gap"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(20))
def test_random_gaps_decide_between_floor_and_ceiling(seed):
    gen = torch.Generator().manual_seed(seed)
    gaps = (torch.randn(60, generator=gen) * 0.5 + 0.2).tolist()
    floor, ceiling = int(torch.randint(0, 30, (1,), generator=gen)), int(torch.randint(30, 60, (1,), generator=gen))
    stop = AutoKDStop(window=3, min_step=floor, max_step=ceiling)
    step = feed(stop, gaps)
    assert floor <= step <= ceiling
    # it fires at the first step from the floor whose last 3 gaps average <= 0 (equal token counts here)
    first = next((s for s in range(max(floor, 3), ceiling) if sum(gaps[s - 3 : s]) <= 0), ceiling)
    assert step == first


def test_steps_without_kd_tokens_leave_the_window_alone():
    stop = AutoKDStop(window=2, min_step=0, max_step=100)
    stop.update(1, [300.0, 200.0, 100.0])  # gap +1
    stop.update(2, [0.0, 0.0, 0.0])  # nothing supervised
    assert stop.history == [[300.0, 200.0, 100.0]] and not stop.decided


def test_window_weighs_tokens_not_steps():
    stop = AutoKDStop(window=2, min_step=0, max_step=100)
    stop.update(1, [1.0 * 10 + 0.5 * 10, 1.0 * 10, 10.0])  # 10 tokens at gap +0.5
    assert stop.update(2, [1.0 * 90 - 0.1 * 90, 1.0 * 90, 90.0]) is not None  # (5 - 9) / 100 < 0 (per step: +0.2)


def test_state_round_trips_through_json():
    stop = AutoKDStop(window=3, min_step=1, max_step=50)
    feed(stop, [0.5, 0.4])
    stored = json.loads(json.dumps(stop.state()))
    again = AutoKDStop.from_state(stored)  # what Trainer does with restore_callback_states_from_checkpoint
    other = AutoKDStop(window=3, min_step=1, max_step=50)
    other.load(stored)  # what SALTTrainer does on every resume
    assert again.state() == other.state() == stop.state()
    decided = [feed(s, [0.3, -1.0, -1.0], first=3) for s in (stop, again, other)]
    # the window carried over: steps 2-4 average below 0; a fresh window would only be full at step 5
    assert decided == [4] * 3
    assert feed(AutoKDStop(window=3, min_step=1, max_step=50), [0.3, -1.0, -1.0], first=3) == 5
    assert again.state() == other.state() == stop.state()


# ---- 2. the weight under "auto" ------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["step", "linear_decay", "linear_ratio_decay"])
def test_weight_holds_until_the_decision_then_follows_the_schedule(schedule):
    for step in range(30):
        assert auto_kd_weight(step, schedule=schedule, weight=0.5, stop_step=None, ramp=4) == 0.5
    stop, ramp = 10, 4
    weights = [auto_kd_weight(s, schedule=schedule, weight=0.5, stop_step=stop, ramp=ramp) for s in range(20)]
    assert weights[:stop] == [0.5] * stop
    end = auto_kd_end(schedule, stop, ramp)
    assert end == (stop if schedule == "step" else stop + ramp)
    assert all(w == 0.0 for w in weights[end:]) and all(w > 0.0 for w in weights[:end])
    for s in range(stop, end):  # the schedule's own ramp, counted from the decision
        assert weights[s] == kd_weight(s - stop, schedule=schedule, weight=0.5, kd_steps=ramp)


# ---- 3. in SALTTrainer -------------------------------------------------------------------------------------------

# The fixtures' teacher is a fresh model with a sharpened head: worse than the fresh student from step 0, so the
# test fires as soon as its window (3 steps) is full, at step 3 of 6, unless the floor says otherwise.
AUTO_RUN = dict(
    max_steps=6,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    learning_rate=3e-3,
    kd_steps="auto",
    kd_auto_window=3,
    kd_auto_min_ratio=0.0,
    kd_auto_max_ratio=1.0,
)


def auto_run(tmp_path, tokenizer, teacher, ds, out="out", resume=None, **kw):
    args = config(tmp_path, output_dir=str(tmp_path / out), **{**AUTO_RUN, **kw})
    trainer = tiny_salt_trainer(tokenizer, teacher, args, ds)
    calls = []
    trainer.add_callback(TeacherCalls(trainer, calls))
    trainer.train(resume_from_checkpoint=resume)
    return trainer, calls


class TeacherCalls(TrainerCallback):
    """Records the global step of every teacher forward (the teacher is loaded lazily: hooked once placed)."""

    def __init__(self, trainer, calls):
        self.trainer, self.calls, self.hooked = trainer, calls, False

    def on_step_begin(self, args, state, control, **kwargs):
        module = self.trainer.teacher_model
        if module is not None and not self.hooked:
            module.register_forward_hook(lambda *a: self.calls.append(self.trainer.state.global_step))
            self.hooked = True


def logs_of(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


def test_auto_stop_fires_logs_why_and_releases_the_teacher(tmp_path, tokenizer, token_stream, teacher):
    trainer, calls = auto_run(tmp_path, tokenizer, teacher, dataset(token_stream, 24))
    assert trainer.kd_stop.stop_step == 3 and trainer.kd_steps == 3
    assert calls == [0, 0, 1, 1, 2, 2] and trainer.teacher_model is None
    logs = logs_of(trainer)
    assert [h["kd_weight"] for h in logs] == [0.5] * 3 + [0.0] * 3
    assert all("teacher_nll" in h for h in logs[:3]) and not any("teacher_nll" in h for h in logs[3:])
    (stop,) = [h for h in trainer.state.log_history if "kd_stop_step" in h]
    assert stop["kd_stop_step"] == 3 and stop["step"] == 3 and stop["kd_stop_at_ceiling"] == 0.0
    # the why is the window's statistics: the logged per-step losses (equal token counts per step) averaged
    assert stop["kd_stop_student_nll"] == pytest.approx(sum(h["nll_loss"] for h in logs[:3]) / 3, rel=1e-6)
    assert stop["kd_stop_teacher_nll"] == pytest.approx(sum(h["teacher_nll"] for h in logs[:3]) / 3, rel=1e-6)
    assert stop["kd_stop_gap"] <= 0.0
    assert trainer.salt_settings()["kd_steps"] == "auto" and trainer.salt_settings()["kd_end_step"] == 3


def test_logged_teacher_nll_is_the_teachers_loss_on_the_students_batch(tmp_path, tokenizer, token_stream, teacher):
    ds = dataset(token_stream, 4, supervised=[24, 5, 17, 2])
    args = config(tmp_path, max_steps=1, per_device_train_batch_size=4, kd_steps=1)
    trainer = SALTTrainer(model=make_student(tokenizer), teacher_model=teacher, args=args, train_dataset=ds)
    trainer.train()
    (log,) = logs_of(trainer)
    ids, labels = torch.tensor(ds["input_ids"]), torch.tensor(ds["labels"])
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits.double()
    naive = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="mean")
    assert log["teacher_nll"] == pytest.approx(naive.item(), rel=1e-5)


def make_student(tokenizer):
    from fixtures import make_llama

    return make_llama(len(tokenizer), 32, 2, seed=0)


def test_floor_and_ceiling_in_the_trainer(tmp_path, tokenizer, token_stream, teacher):
    ds = dataset(token_stream, 24)
    late, _ = auto_run(tmp_path, tokenizer, teacher, ds, out="late", kd_auto_min_ratio=0.7)  # floor: step 5
    assert late.kd_stop.stop_step == 5
    # floor = ceiling = step 2: before the window is full, the ceiling decides
    forced, calls = auto_run(
        tmp_path, tokenizer, teacher, ds, out="forced", kd_auto_min_ratio=0.3, kd_auto_max_ratio=0.3
    )
    assert forced.kd_stop.stop_step == 2 and forced.kd_stop.reason["kd_stop_at_ceiling"] == 1.0
    assert calls == [0, 0, 1, 1]


@pytest.mark.parametrize("schedule", ["linear_decay", "linear_ratio_decay"])
def test_linear_schedules_ramp_down_over_the_window_after_the_decision(
    tmp_path, tokenizer, token_stream, teacher, schedule
):
    trainer, calls = auto_run(
        tmp_path, tokenizer, teacher, dataset(token_stream, 32), max_steps=8, kd_auto_window=2, kd_schedule=schedule
    )
    stop = trainer.kd_stop.stop_step
    assert stop == 2 and trainer.kd_steps == 4  # the decision at 2, w = 0 from 2 + window on
    expected = [auto_kd_weight(s, schedule=schedule, weight=0.5, stop_step=2, ramp=2) for s in range(8)]
    assert [h["kd_weight"] for h in logs_of(trainer)] == pytest.approx(expected)
    assert expected[2] == 0.5 and 0 < expected[3] < 0.5 and expected[4:] == [0.0] * 4
    assert sorted(set(calls)) == [0, 1, 2, 3] and trainer.teacher_model is None


def test_fall_ratio_sets_how_long_w_falls_after_the_decision(tmp_path, tokenizer, token_stream, teacher):
    # the test fires at 2 (window 2); w then falls over ceil(0.5 * 8) = 4 steps, not over the window
    trainer, calls = auto_run(
        tmp_path,
        tokenizer,
        teacher,
        dataset(token_stream, 32),
        max_steps=8,
        kd_auto_window=2,
        kd_schedule="linear_decay",
        kd_auto_fall_ratio=0.5,
    )
    assert (trainer.kd_stop.stop_step, trainer.kd_stop.fall, trainer.kd_steps) == (2, 4, 6)
    expected = [0.5, 0.5, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0]  # 0.5 * (1 - k / 4) for k = 0..3 after the decision
    assert [h["kd_weight"] for h in logs_of(trainer)] == pytest.approx(expected)
    assert sorted(set(calls)) == [0, 1, 2, 3, 4, 5] and trainer.teacher_model is None
    assert trainer.kd_stop.state()["args"]["fall"] == 4  # a resumed run falls over the same steps


def test_epoch_based_run_takes_floor_and_ceiling_from_its_step_count(tmp_path, tokenizer, token_stream, teacher):
    # no max_steps: 24 rows, 2 x 2 per step, one epoch = 6 steps; ceiling 0.3 of them = step 2
    trainer, calls = auto_run(
        tmp_path,
        tokenizer,
        teacher,
        dataset(token_stream, 24),
        max_steps=-1,
        num_train_epochs=1,
        kd_auto_max_ratio=0.3,
    )
    assert trainer.state.global_step == 6 and (trainer.kd_stop.min_step, trainer.kd_stop.max_step) == (0, 2)
    assert trainer.kd_stop.stop_step == 2 and calls == [0, 0, 1, 1]


def test_resume_before_at_and_after_the_switch_is_exact(tmp_path, tokenizer, token_stream, teacher, teacher_loads):
    teacher_dir = save_teacher(teacher, tokenizer, tmp_path / "teacher")
    ds = dataset(token_stream, 32, supervised=[24, 5, 17, 2] * 8)
    save = dict(save_strategy="steps", save_steps=1)
    full, _ = auto_run(tmp_path, tokenizer, teacher_dir, ds, out="full", **save)
    assert full.kd_stop.stop_step == 3
    stored = json.loads((tmp_path / "full" / "checkpoint-2" / "trainer_state.json").read_text())
    assert len(stored["stateful_callbacks"]["AutoKDStop"]["attributes"]["history"]) == 2
    for ckpt in (2, 3, 4):  # before the decision (a window of 2 steps carried over), at it, after it
        teacher_loads.clear()
        resume = str(tmp_path / "full" / f"checkpoint-{ckpt}")
        resumed, calls = auto_run(tmp_path, tokenizer, teacher_dir, ds, out="full", resume=resume, **save)
        assert resumed.kd_stop.stop_step == 3
        assert (flat_params(resumed.model) - flat_params(full.model)).abs().max().item() <= 1e-6
        assert len(teacher_loads) == (1 if ckpt < 3 else 0)  # decided at 3: the resumed run never loads it
        assert calls == [2, 2][: 2 * (3 - ckpt)] if ckpt < 3 else calls == []


def test_callback_state_restored_by_the_trainer_flag_too(tmp_path, tokenizer, token_stream, teacher):
    ds = dataset(token_stream, 24)
    full, _ = auto_run(tmp_path, tokenizer, teacher, ds, out="full", save_strategy="steps", save_steps=2)
    resume = str(tmp_path / "full" / "checkpoint-2")
    resumed, _ = auto_run(
        tmp_path, tokenizer, teacher, ds, out="full", resume=resume, restore_callback_states_from_checkpoint=True
    )
    assert resumed.kd_stop.stop_step == 3
    assert (flat_params(resumed.model) - flat_params(full.model)).abs().max().item() <= 1e-6


def salt_ds_auto_run(tmp_path, tokenizer, teacher_dir, ds, resume=None):
    from test_selection import RecordingCollator

    collator = RecordingCollator()
    args = config(
        tmp_path,
        output_dir=str(tmp_path / "ds"),
        **AUTO_RUN,
        kd_data_selection=True,
        kd_select_fraction=0.25,
        kd_select_top_k=128,
        remove_unused_columns=False,
        kd_select_cache_dir=str(tmp_path / "scores"),
        per_device_eval_batch_size=8,
        save_strategy="steps",
        save_steps=1,
    )
    trainer = tiny_salt_trainer(tokenizer, teacher_dir, args, ds, data_collator=collator)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, collator.row_ids


def test_salt_ds_selection_ends_with_the_auto_stop_and_resumes_exactly(
    tmp_path, tokenizer, token_stream, teacher, teacher_loads
):
    from test_selection import rows_dataset

    from salt_hf.selection import KDSelectionSampler

    teacher_dir = save_teacher(teacher, tokenizer, tmp_path / "teacher")
    ds = rows_dataset(token_stream, 24)
    full, seen = salt_ds_auto_run(tmp_path, tokenizer, teacher_dir, ds)
    stop = full.kd_stop
    assert stop.stop_step == 3
    # the ceiling (all 6 steps) laid the selection out for 24 samples; the decision at step 3 moved the switch to
    # the first step the data loader had not drawn from yet (it reads a batch ahead)
    assert stop.data_switch in (12, 16)
    selection = full.kd_selection
    selected = set(selection.selected.tolist())
    assert set(seen[: stop.data_switch]) <= selected and not set(seen[stop.data_switch :]) <= selected
    # the very stream of a sampler that knew the switch from the start (what a resumed run builds)
    known = KDSelectionSampler(selection.selected, 24, kd_samples=stop.data_switch, total_samples=24, seed=0)
    assert seen == list(known)
    for ckpt in (2, 4):
        teacher_loads.clear()
        resume = str(tmp_path / "ds" / f"checkpoint-{ckpt}")
        resumed, seen_resumed = salt_ds_auto_run(tmp_path, tokenizer, teacher_dir, ds, resume=resume)
        assert seen_resumed == seen[4 * ckpt :] and resumed.kd_stop.data_switch == stop.data_switch
        assert (flat_params(resumed.model) - flat_params(full.model)).abs().max().item() <= 1e-6
        assert len(teacher_loads) == (1 if ckpt < 3 else 0)


# ---- 4. the config -------------------------------------------------------------------------------------------------


def test_auto_config_and_its_errors(tmp_path):
    base = dict(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none")
    assert SALTConfig(**base, max_steps=10, kd_steps="auto").resolve_kd_steps(10) == 5  # the ceiling, 0.5
    assert SALTConfig(**base, kd_steps="auto").resolve_kd_steps(7) == 4  # epochs: the run's steps, known at train
    assert SALTConfig(**base, max_steps=10, kd_steps="7").kd_steps == 7  # as the CLI hands it over
    for bad, match in [
        (dict(max_steps=10, kd_steps="often"), "whole number of optimizer steps or 'auto'"),
        (dict(max_steps=10, kd_steps="auto", kd_ratio=0.2), "exactly one"),
        (dict(max_steps=10, kd_steps="auto", kd_auto_window=0), "kd_auto_window"),
        (dict(max_steps=10, kd_steps="auto", kd_auto_min_ratio=0.6, kd_auto_max_ratio=0.4), "kd_auto_min_ratio"),
        (dict(max_steps=10, kd_steps="auto", kd_auto_max_ratio=1.5), "kd_auto_max_ratio"),
        (dict(max_steps=10, kd_steps="auto", kd_schedule="linear_decay", kd_auto_fall_ratio=0.0), "must be in"),
        (dict(max_steps=10, kd_steps="auto", kd_schedule="linear_decay", kd_auto_fall_ratio=1.5), "must be in"),
        (dict(max_steps=10, kd_steps="auto", kd_auto_fall_ratio=0.2), "kd_schedule='step' drops it at once"),
        (dict(max_steps=10, kd_ratio=0.2, kd_schedule="linear_decay", kd_auto_fall_ratio=0.2), "only with kd_steps"),
    ]:
        with pytest.raises(ValueError, match=match):
            SALTConfig(**base, **bad)


def test_cli_parses_auto(tmp_path):
    from transformers import HfArgumentParser

    argv = ["--output_dir", str(tmp_path), "--max_steps", "10", "--kd_steps", "auto", "--kd_auto_window", "4"]
    (args,) = HfArgumentParser(SALTConfig).parse_args_into_dataclasses(argv)
    assert args.kd_steps == "auto" and args.kd_auto and args.kd_auto_window == 4
