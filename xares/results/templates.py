"""The Jinja templates of the result pages (leaderboard, run page), in ``assets/``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jinja2 import Environment

ASSETS = Path(__file__).resolve().parent / "assets"


def environment(*, html: bool) -> Environment:
    """The environment every result page renders in: a name the page does not define fails
    instead of rendering empty, and only ``*.html.j2`` templates are escaped. HTML templates
    drop their block tags' own lines; markdown is line-oriented and keeps every newline it
    writes."""
    # Imported when a page is drawn, at a run's end: not on every import of the package.
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=FileSystemLoader(ASSETS),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=StrictUndefined,
        trim_blocks=html,
        lstrip_blocks=html,
    )
