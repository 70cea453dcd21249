"""The byte budget (where the 16,000,000 bytes go) and the planner that spends it.

`sizes`: the artifact split into components, what-ifs, codec comparisons (`pgolf budget`).
`planner`: measured per-group options and the exact knapsack that fits them under the cap
(`pgolf budget --fit`); `planfile`: the plan file it writes and `pgolf quantize --plan` reads
(stdlib only, so a bad plan is refused before torch loads).

Public face: those three modules; nothing is imported here, so reading a plan file does not pay
for torch.
"""
