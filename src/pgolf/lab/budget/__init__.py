"""The byte budget (where the 16,000,000 bytes go) and the planner that spends it.

`sizes`: the artifact split into components, what-ifs, codec comparisons (`pgolf budget`).
`planner`: measured per-group options and the exact knapsack that fits them under the cap
(`pgolf budget --fit`); `planfile`: the plan file it writes and `pgolf quantize --plan` reads.

Public face: the names below and the `planner`/`planfile` modules. Modules inside this package
import their siblings, never this file.
"""

from __future__ import annotations

from pgolf.lab.budget.sizes import (
    BYTE_BUDGET,
    budget_report,
    byteshuffle_brotli_reference,
    compare_codecs,
    format_budget,
    format_what_if,
    group_of,
    load_weights,
    parse_what_ifs,
    reference_input,
    what_if,
)

__all__ = [
    "BYTE_BUDGET",
    "budget_report",
    "byteshuffle_brotli_reference",
    "compare_codecs",
    "format_budget",
    "format_what_if",
    "group_of",
    "load_weights",
    "parse_what_ifs",
    "reference_input",
    "what_if",
]
