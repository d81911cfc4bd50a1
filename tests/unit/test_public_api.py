"""The library's public names are exactly those documented, and each one is there."""

from __future__ import annotations

import re
from pathlib import Path

import otel

README = Path(__file__).resolve().parents[2] / "README.md"


def test_all_lists_exactly_the_public_names() -> None:
    # Public: the functions and classes of ours that `otel` offers at its top level.
    ours = {
        name
        for name, value in vars(otel).items()
        if not name.startswith("_")
        and callable(value)
        and getattr(value, "__module__", "").startswith("otel")
    }
    assert set(otel.__all__) == ours
    assert len(otel.__all__) == len(set(otel.__all__))


def test_readme_documents_every_public_function() -> None:
    documented = set(re.findall(r"`otel\.([a-z_]+)\(", README.read_text()))
    callables = {name for name in otel.__all__ if name[0].islower()}
    assert callables <= documented, f"undocumented: {sorted(callables - documented)}"
