"""
Stored teacher targets: the teacher run once over the packed training rows (`salt-teacher-targets`), its targets read
by every later student run (`SALTConfig(teacher_targets=PATH)`) instead of a teacher forward.

    draw.py     a row's targets from the teacher's logits: K ids drawn from its tempered distribution with their counts
                (form "sampled", unbiased for the forward KL), or its top-K ids and log-probabilities ("topk", biased)
    store.py    the store on disk (shards + manifest), its checks and fingerprints, reading rows by index
    writer.py   the precompute: the teacher over the rows, shards written atomically, resumable, any processes
    stored.py   `StoredTeacher`: the store answering the trainer where a `Teacher` would
"""

from .draw import FORMS, RowTargets, row_targets, row_uniforms, sample_ids, weights_of
from .store import Manifest, StoreError, TargetStore, rows_fingerprint, tokenizer_fingerprint
from .stored import ROW_ID, StoredTeacher, with_row_ids
from .writer import store_targets, write_store

__all__ = [
    "FORMS",
    "ROW_ID",
    "Manifest",
    "RowTargets",
    "StoreError",
    "StoredTeacher",
    "TargetStore",
    "row_targets",
    "row_uniforms",
    "rows_fingerprint",
    "sample_ids",
    "store_targets",
    "tokenizer_fingerprint",
    "weights_of",
    "with_row_ids",
    "write_store",
]
