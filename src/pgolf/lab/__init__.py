"""The lab: every pgolf tool a submission never runs (data download and corpus building,
tokenizer training, budget what-ifs and plans, plots and reports, statistics, records export and
verification, the auditor and studies). It may import the core; the core never imports it."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_face(package: str, face: Mapping[str, str]) -> Callable[[str], Any]:
    """A group's module `__getattr__` (PEP 562): each public name of `face` (name -> the member
    module defining it) is imported from its member on first use, so importing a light member
    through its group never drags in a heavy sibling (torch)."""

    def __getattr__(name: str) -> Any:
        if name not in face:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{face[name]}"), name)

    return __getattr__
