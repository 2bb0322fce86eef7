"""
Shared fixtures: a real byte-level BPE tokenizer trained on real text, tiny Llama students and teachers. The plain
helpers the tests share are in fixtures.py.

The environment of the whole suite is set here, once, before any test module imports transformers or datasets (which
read it at import); `make test` exports the same through the Makefile, and subprocesses inherit it.
"""

from __future__ import annotations

import os
import tempfile

# The tests build every model and tokenizer they use: the hub is never reached.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# datasets reads its cache location at import: keep the suite's Arrow caches out of the user's cache.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="salt_hf_tests_datasets_"))

import pytest
import torch
from fixtures import STDLIB, make_llama

from salt_hf.data import train_bpe_tokenizer

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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensors: on a busy 2-core machine the threads' spin-waits made such a
    file ~20x slower (27 s instead of 1.4 s). Restored afterwards for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
