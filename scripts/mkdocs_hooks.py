"""mkdocs hooks (mkdocs.yml `hooks:`): the SALTConfig field table, written from the code at build time.

mkdocstrings renders a dataclass field as its `field(...)` call, not its `metadata={"help": ...}`: the help texts,
which are also `salt-train --help`'s, would be missing from the API page. A page that holds the marker below gets a
table of every field SALTConfig adds to `TrainingArguments` (name, type, default, help), read from
`dataclasses.fields(SALTConfig)`, so the page can never disagree with the code.
"""

from __future__ import annotations

import dataclasses

MARKER = "<!-- salt-config-fields -->"


def _type_name(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    # a "|" would end the table's cell, also inside backticks
    return text.replace("typing.", "").replace(" | ", " or ")


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory()!r}`"
    return "required"


def salt_config_table() -> str:
    from transformers import TrainingArguments

    from salt_hf import SALTConfig

    inherited = {field.name for field in dataclasses.fields(TrainingArguments)}
    rows = ["| field | type | default | help |", "| --- | --- | --- | --- |"]
    for field in dataclasses.fields(SALTConfig):
        if field.name in inherited or not field.init:
            continue
        help_text = " ".join(field.metadata.get("help", "").split()).replace("|", "\\|")
        rows.append(f"| `{field.name}` | `{_type_name(field.type)}` | {_default(field)} | {help_text} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, salt_config_table())
