"""Mako templates with HTML escaping on by default.

``default_filters=['h']`` escapes every ``${…}``; a template must say
``| n`` to print raw markup, which none of ours does with outside data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mako.lookup import TemplateLookup

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


def template_lookup(extra_dirs: list[Path] | None = None) -> TemplateLookup:
    """Site template folders (if any) come first, so a site can override a page."""
    dirs = [str(d) for d in (extra_dirs or [])] + [str(TEMPLATE_DIR)]
    return TemplateLookup(
        directories=dirs,
        default_filters=["h"],
        input_encoding="utf-8",
        strict_undefined=True,
    )


def render(lookup: TemplateLookup, name: str, **context: Any) -> str:
    return str(lookup.get_template(name).render(**context))
