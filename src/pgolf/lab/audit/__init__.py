"""The compliance auditor (spec rules-and-compliance.md part (d)): the empirical tests of the four
conditions on a model and a token stream (`audit`, built on `base.Evaluator`; C1 in `conditions`,
C2 in `c2`, C3/C4 in `c3`), the run-level driver behind `pgolf audit` (`run`: artifact, training
decoy T1.3, static screen), and the static screen of a submission's source (`static`).

Public face: the names below. Modules inside this package import their siblings, never this file.
"""

from __future__ import annotations

from pgolf.lab import lazy_face

# public name -> the member module that defines it (imported on first use, so `pgolf verify`
# or the static screen do not pay for torch when they import a sibling of a heavy module)
_FACE = {
    "MODES": "base",
    "EvalOut": "base",
    "Evaluator": "base",
    "Row": "base",
    "audit_scale": "base",
    "maxdiff": "base",
    "scoring_row": "base",
    "traced": "base",
    "audit": "conditions",
    "cut_points": "conditions",
    "format_rows": "conditions",
}
__all__ = sorted(_FACE)

__getattr__ = lazy_face(__name__, _FACE)
