"""salt_hf.sources: model folders read without their weights, on real save_pretrained output and real damage to it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fixtures import config, dataset, make_llama
from safetensors.torch import save_file

from salt_hf import SALTTrainer
from salt_hf.sources import check_checkpoint, check_model_source, check_safetensors

VOCAB = 64


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "model"
    make_llama(VOCAB, 16, 1, seed=1).save_pretrained(path)
    return path


def damaged_copy(saved: Path, tmp_path: Path, cut: int) -> Path:
    path = tmp_path / "copy"
    shutil.copytree(saved, path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:cut])
    return path


def test_a_whole_folder_passes_and_its_config_is_returned(saved):
    config = check_model_source(str(saved))
    assert config.model_type == "llama" and config.vocab_size == VOCAB
    tensors = check_safetensors(saved / "model.safetensors")
    assert "lm_head.weight" in tensors and tensors["lm_head.weight"]["shape"] == [VOCAB, 16]


@pytest.mark.parametrize("cut", [0, 5, 8 + 10, -1, -1000], ids=["empty", "in length", "in header", "1 byte", "1 kB"])
def test_every_cut_is_named(saved, tmp_path, cut):
    size = (saved / "model.safetensors").stat().st_size
    folder = damaged_copy(saved, tmp_path, cut if cut >= 0 else size + cut)
    with pytest.raises(ValueError, match="model.safetensors") as info:
        check_model_source(str(folder))
    assert "copy or download it again" in str(info.value)


def test_extra_bytes_and_a_wrong_size_in_the_header_are_refused(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.zeros(4, 3)}, str(path))
    path.write_bytes(path.read_bytes() + b"\0" * 7)
    with pytest.raises(ValueError, match="7 bytes more than its header declares"):
        check_safetensors(path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 40]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 40)
    with pytest.raises(ValueError, match="40 bytes for a F32 tensor of shape"):
        check_safetensors(path)


def test_sharded_checkpoint_missing_a_shard_or_a_tensor(saved, tmp_path):
    sharded = tmp_path / "sharded"
    make_llama(VOCAB, 16, 1, seed=1).save_pretrained(sharded, max_shard_size="8KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) >= 2 and check_model_source(str(sharded)) is not None
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    moved = next(k for k, v in index["weight_map"].items() if v == shards[0].name)
    index["weight_map"][moved] = shards[1].name  # the index places a tensor in a shard that lacks it
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"lacks 1 of the tensors .*{moved}"):
        check_model_source(str(sharded))
    shards[1].unlink()
    with pytest.raises(ValueError, match=f"missing \\({shards[1].name}\\)"):
        check_model_source(str(sharded))


def test_pickled_weights_count_only_when_allowed(saved, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(saved, folder)
    (folder / "model.safetensors").unlink()
    torch.save(make_llama(VOCAB, 16, 1, seed=1).state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only as pytorch_model.bin"):
        check_model_source(str(folder))
    assert check_model_source(str(folder), safetensors_only=False).model_type == "llama"


def test_checkpoint_changed_after_its_save(tmp_path):
    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    (ckpt / "optimizer.pt").write_bytes(b"x" * 100)
    sizes = {p.name: p.stat().st_size for p in ckpt.iterdir()}
    (ckpt / "salt_checkpoint.json").write_text(json.dumps({"files": sizes}))
    check_checkpoint(ckpt)
    (ckpt / "optimizer.pt").write_bytes(b"x" * 50)
    with pytest.raises(ValueError, match="optimizer.pt is 50 bytes but was 100 bytes"):
        check_checkpoint(ckpt)


def test_the_trainer_refuses_a_damaged_teacher_before_the_output_folder(saved, tmp_path, token_stream):
    """The library checks a teacher given by path when the trainer is built (it loads only at the KD stage)."""
    teacher = damaged_copy(saved, tmp_path, cut=-100)
    args = config(tmp_path, max_steps=2, kd_steps=1)
    with pytest.raises(ValueError, match="is cut short"):
        SALTTrainer(
            model=make_llama(VOCAB, 16, 1, seed=0),
            teacher_model=str(teacher),
            args=args,
            train_dataset=dataset(token_stream % VOCAB, 4),
        )
    assert not Path(args.output_dir).exists()
