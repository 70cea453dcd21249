"""The compliance auditor (spec rules-and-compliance.md part (d)): the empirical tests of the four
conditions on a model and a token stream (`audit`, built on `base.Evaluator`; C1 in `conditions`,
C2 in `c2`, C3/C4 in `c3`), the run-level driver behind `pgolf audit` (`run`: artifact, training
decoy T1.3, static screen), and the static screen of a submission's source (`static`).

Public face: the names below. Modules inside this package import their siblings, never this file.
"""

from __future__ import annotations

from pgolf.lab.audit.base import (
    MODES,
    EvalOut,
    Evaluator,
    Row,
    audit_scale,
    ledger_from_plan,
    maxdiff,
    scoring_row,
    traced,
)
from pgolf.lab.audit.conditions import audit, cut_points, format_rows

__all__ = [
    "MODES",
    "EvalOut",
    "Evaluator",
    "Row",
    "audit",
    "audit_scale",
    "ledger_from_plan",
    "cut_points",
    "format_rows",
    "maxdiff",
    "scoring_row",
    "traced",
]
