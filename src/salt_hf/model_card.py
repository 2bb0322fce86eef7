"""The model card of a SALT run: `Trainer.create_model_card`'s README.md with a section on the SALT settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PAPER = "https://arxiv.org/abs/2410.18779"
TAGS = ["salt", "knowledge-distillation"]


def salt_section(settings: dict[str, Any]) -> str:
    """
    The card's SALT section (Markdown) from `SALTTrainer.salt_settings()`: the keys `teacher`, `kd_weight`,
    `kd_schedule`, `kd_steps` and `kd_end_step` (None while the KD stage has not ended).
    """
    end = settings["kd_end_step"]
    rows = [
        ("teacher", settings["teacher"] if settings["teacher"] is not None else "none (plain training)"),
        ("kd_weight (w)", settings["kd_weight"]),
        ("kd_schedule", settings["kd_schedule"]),
        ("kd_steps (n_KD)", settings["kd_steps"]),
        ("KD stage ended at step", end if end is not None else "not ended"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return (
        "\n## SALT\n\n"
        f"Trained with SALT, small-model-aided large-model training ({PAPER}): for the first n_KD optimizer steps "
        "the loss mixes the next-token loss with knowledge distillation from the small teacher, with weight w "
        "following the KD schedule; from then on it is the plain next-token loss.\n\n"
        "| setting | value |\n|---|---|\n"
        f"{table}\n"
    )


def write_model_card(trainer, **card_kwargs) -> Path | None:
    """
    Writes `README.md` in `trainer.args.output_dir`: `trainer.create_model_card(**card_kwargs)` (tags `TAGS` added),
    then the SALT section. Only the main process writes; returns the card's path there, None elsewhere.
    """
    trainer.create_model_card(tags=[*TAGS, *card_kwargs.pop("tags", [])], **card_kwargs)
    if not trainer.is_world_process_zero():
        return None
    path = Path(trainer.args.output_dir, "README.md")
    with open(path, "a", encoding="utf-8") as f:
        f.write(salt_section(trainer.salt_settings()))
    return path
