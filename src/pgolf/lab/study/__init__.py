"""The memorization study of validation-set TTT (spec rules-and-compliance.md, last part): replicate
runs, the epoch ladder, canaries and the statistics that tell memorization from generalization
(`runner`), its documents and streams (`data`), its statistics (`stats`) and its report table and
plot (`report`). Results of pre-quant TTT are always non-record.

Public face: the names below and the `report` module. Modules inside this package import their
siblings, never this file.
"""

from __future__ import annotations

import importlib

# public name -> the member module that defines it (imported on first use, so `pgolf verify`
# or the static screen do not pay for torch when they import a sibling of a heavy module)
_FACE = {
    "QUICK": "runner",
    "StudyConfig": "runner",
    "parse_epochs": "runner",
    "run_study": "runner",
    "study_main": "runner",
}
__all__ = sorted(_FACE)


def __getattr__(name: str):
    if name not in _FACE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_FACE[name]}"), name)
