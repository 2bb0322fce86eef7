"""Shared fixtures: a real byte-level BPE tokenizer trained on real text, tiny Llama students and teachers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# datasets reads its cache location at import: keep the suite's Arrow caches out of the user's cache.
import tempfile  # noqa: E402

os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="salt_hf_tests_datasets_"))

import sysconfig  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from salt_hf.data import train_bpe_tokenizer  # noqa: E402

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# A handful of real stdlib modules: enough text for a 512-token BPE and a few hundred training rows.
TEXT_FILES = ["os.py", "json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "heapq.py"]
VOCAB = 512


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return [(STDLIB / name).read_text(encoding="utf-8") for name in TEXT_FILES]


@pytest.fixture(scope="session")
def tokenizer(texts, tmp_path_factory):
    return train_bpe_tokenizer(texts, vocab_size=VOCAB, save_dir=str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="session")
def token_stream(texts, tokenizer) -> torch.Tensor:
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    return torch.tensor(ids)


def make_llama(vocab: int, hidden: int, layers: int, seed: int, max_pos: int = 128, head_scale: float = 1.0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_pos,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model


@pytest.fixture
def student(tokenizer):
    return make_llama(len(tokenizer), hidden=32, layers=2, seed=0)


@pytest.fixture
def teacher(tokenizer):
    # A freshly initialised model predicts nearly uniform distributions; a larger output head makes the teacher's
    # distributions peaked and different from the student's, so the KD term is far above rounding.
    return make_llama(len(tokenizer), hidden=16, layers=1, seed=1, head_scale=40.0)


@pytest.fixture
def teacher_loads(monkeypatch) -> list:
    """Records every call of SALTTrainer's teacher loader (the real loader still runs): one entry per load."""
    import salt_hf.teacher as teacher_module

    loads: list = []
    real_load = teacher_module.load_teacher
    monkeypatch.setattr(teacher_module, "load_teacher", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    return loads
