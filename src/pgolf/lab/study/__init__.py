"""The memorization study of validation-set TTT (spec rules-and-compliance.md, last part): replicate
runs, the epoch ladder, canaries and the statistics that tell memorization from generalization
(`runner`), its documents and streams (`data`), its statistics (`stats`) and its report table and
plot (`report`). Results of pre-quant TTT are always non-record.

Public face: the names below and the `report` module. Modules inside this package import their
siblings, never this file.
"""

from __future__ import annotations

from pgolf.lab.study.runner import QUICK, StudyConfig, parse_epochs, run_study, study_main

__all__ = ["QUICK", "StudyConfig", "parse_epochs", "run_study", "study_main"]
