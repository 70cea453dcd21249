"""The memorization study of validation-set TTT (spec rules-and-compliance.md, last part): replicate
runs, the epoch ladder, canaries and the statistics that tell memorization from generalization
(`runner`), its documents and streams (`data`), its statistics (`stats`) and its report table and
plot (`report`). Results of pre-quant TTT are always non-record.

Public face: the names below and the `report` module. Modules inside this package import their
siblings, never this file.
"""

from __future__ import annotations

from pgolf.lab import lazy_face

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

__getattr__ = lazy_face(__name__, _FACE)
