"""`make figures`: the figure script redraws every figure the README and docs show, from the committed JSON."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def shown_figures() -> set[str]:
    """Names of the figures under docs/figures/ that README.md and docs/*.md show."""
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    return {name for page in pages for name in re.findall(r"figures/([\w.-]+\.png)", page.read_text(encoding="utf-8"))}


def test_figures_script_draws_every_shown_figure(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "figures.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    drawn = {path.name for path in tmp_path.glob("*.png")}
    assert {"fig1_curves.png", "fig2_scale.png"} <= shown_figures()
    # every figure a page shows is drawn by the script (none by hand), and is committed where the pages expect it
    assert shown_figures() <= drawn
    assert shown_figures() <= {path.name for path in (ROOT / "docs" / "figures").glob("*.png")}
    for name in drawn:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 20_000, name
