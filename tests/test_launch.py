"""salt_hf.launch: the checks of what the launch decides, made before the trainer creates the output folder."""

from __future__ import annotations

import os

import pytest
from fixtures import config

from salt_hf.launch import LAUNCHER_ENV, check_launch, check_writable_folder, launched


@pytest.fixture
def no_launcher(monkeypatch):
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)


def test_a_plain_process_is_not_launched_and_a_launcher_environment_is(no_launcher, monkeypatch):
    assert not launched()
    for name in LAUNCHER_ENV:
        monkeypatch.setenv(name, "0")
    assert launched()


def test_zero3_teacher_needs_a_launcher_unless_nothing_distils(tmp_path, no_launcher):
    args = config(tmp_path, teacher_placement="zero3")
    with pytest.raises(ValueError, match="teacher_placement='zero3' shards the teacher across the processes"):
        check_launch(args, distils=True)
    check_launch(args, distils=False)  # no teacher to place: nothing to refuse
    check_launch(config(tmp_path), distils=True)  # replicated: any launch


def test_score_cache_folder_must_be_writable(tmp_path):
    check_writable_folder(tmp_path / "not" / "yet" / "made", "kd_select_cache_dir")
    assert not (tmp_path / "not").exists()  # nothing created by the check
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_writable_folder(tmp_path / "file" / "scores", "kd_select_cache_dir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_read_only_score_cache_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ValueError, match="cannot be written"):
            check_writable_folder(locked / "scores", "kd_select_cache_dir")
    finally:
        locked.chmod(0o700)
