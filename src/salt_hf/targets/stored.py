"""`StoredTeacher`: a store of teacher targets answering the trainer where a `salt_hf.teacher.Teacher` would.

The trainer keeps one teacher attribute and calls `place`, `release`, `name` and `fingerprint` on it; the loss
(`salt_hf.losses.head.FusedHead`) asks a stored teacher for the batch's `targets` by packed-row id instead of running a
forward. Nothing is loaded or placed on a device but the batch's targets.
"""

from __future__ import annotations

import torch

from .store import StoreError, TargetStore, rows_fingerprint, tokenizer_fingerprint

# The column SALTTrainer adds to the training set: each row's index, by which the store is read.
ROW_ID = "salt_row_id"


class StoredTeacher:
    """
    The teacher's targets read from a store written by `salt-teacher-targets` (`salt_hf.targets.writer`).

    Args:
        path (`str`): the store's folder.
        teacher_source (`str`, *optional*): the teacher the run names as well (a local folder): its fingerprint must be
            the store's. It is never loaded.
    """

    def __init__(self, path: str, teacher_source: str | None = None):
        self.path = path
        self.store = TargetStore(path)
        self.manifest = self.store.manifest
        self.module = None
        self.released = False
        if isinstance(teacher_source, str):
            self._check_teacher(teacher_source)

    @classmethod
    def for_run(cls, args, teacher_source, student, teacher_tokenizer, trainer_kwargs: dict):
        """
        The store of `args.teacher_targets` checked against the run (teacher, the tokenizer `processing_class`,
        student, `train_dataset`, temperature); returns it, the vocabulary KD is computed over, and the training set
        with its rows' ids.
        """
        store = cls(args.teacher_targets, teacher_source=teacher_source)
        vocab = store.check_student(student, trainer_kwargs.get("processing_class"), teacher_tokenizer)
        dataset = trainer_kwargs.get("train_dataset")
        store.check_run(dataset, args)
        return store, vocab, with_row_ids(dataset)

    @staticmethod
    def keep_row_ids(trainer) -> None:
        """The Trainer drops the columns its model's forward does not take: keep the rows' ids for the loss."""
        trainer._set_signature_columns_if_needed()
        if ROW_ID not in trainer._signature_columns:
            trainer._signature_columns.append(ROW_ID)

    @property
    def name(self) -> str:
        return f"{self.manifest.teacher} (stored targets: {self.path})"

    def fingerprint(self) -> str:
        return self.manifest.teacher_fingerprint

    def place(self, accelerator=None, args=None) -> None:
        """Nothing to place: the targets are read batch by batch."""
        return None

    def release(self) -> bool:
        """Closes the store; it is never read again. Always False: no model was loaded."""
        self.released = True
        self.store.close()
        return False

    def _check_teacher(self, source: str) -> None:
        from ..selection.cache import path_fingerprint

        fingerprint = path_fingerprint(source, None)
        if fingerprint is not None and fingerprint != self.manifest.teacher_fingerprint:
            raise StoreError(
                f"teacher_targets {self.path} was made with another teacher than {source} (fingerprints differ): make "
                "the store with this teacher, or leave the teacher out of the run."
            )

    def check_student(self, student, tokenizer=None, teacher_tokenizer=None) -> int:
        """The store's tokenizer must be the run's; returns the vocabulary KD is computed over (the store's)."""
        from ..teacher import output_vocab_size

        m = self.manifest
        have = tokenizer_fingerprint(tokenizer)
        if have is not None and m.tokenizer_fingerprint is not None and have != m.tokenizer_fingerprint:
            raise StoreError(
                f"teacher_targets {self.path} was made with another tokenizer than this run's: make the store "
                "with the run's tokenizer."
            )
        if m.vocab_size > output_vocab_size(student):
            raise StoreError(
                f"teacher_targets {self.path} holds ids of a {m.vocab_size}-token vocabulary, the student has "
                f"{output_vocab_size(student)} output rows."
            )
        return m.vocab_size

    def check_run(self, dataset, args) -> None:
        """The store must have been made from this very training set, packing and temperature, and cover all of it."""
        m = self.manifest
        if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
            raise StoreError(
                "teacher_targets needs a training set with a length (not a streamed one): the store is read by row "
                "index. Turn streaming off."
            )
        if args.kd_temperature != m.temperature:
            raise StoreError(
                f"teacher_targets {self.path} was drawn at temperature {m.temperature}, the run asks for "
                f"kd_temperature={args.kd_temperature}: use the store's temperature or make a store at this one."
            )
        n = len(dataset)
        if m.dataset_rows != n or rows_fingerprint(dataset, min(m.rows, n)) != m.data_fingerprint:
            raise StoreError(
                f"teacher_targets {self.path} was made from other training data or packing (its {m.dataset_rows} rows "
                f"of {m.seq_length} tokens differ from this run's {n}): make the store from this run's data."
            )
        if m.rows < n:
            raise StoreError(
                f"teacher_targets {self.path} covers {m.rows} of the training set's {n} rows, and the KD stage may "
                "draw any of them: make the store over all rows."
            )

    def targets(self, row_ids: torch.Tensor, device=None):
        """The batch's targets as `salt_hf.losses.SparseTargets`, one row per position of the batch's rows."""
        if row_ids is None:
            raise RuntimeError(f"a batch without its {ROW_ID!r} column reached the loss with stored teacher targets")
        return self.store.sparse_targets(row_ids.tolist(), device)


class _RowIds(torch.utils.data.Dataset):
    """A map-style dataset whose rows carry their index (`ROW_ID`), for datasets that are not `datasets.Dataset`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return {**self.dataset[index], ROW_ID: index}


def with_row_ids(dataset):
    """The training set with each row's index as a `ROW_ID` column, by which stored teacher targets are read."""
    if hasattr(dataset, "add_column") and hasattr(dataset, "column_names"):
        return dataset if ROW_ID in dataset.column_names else dataset.add_column(ROW_ID, list(range(len(dataset))))
    return _RowIds(dataset)
