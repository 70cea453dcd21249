"""Records folders, as the challenge's maintainers review them.

`folder`: `export` writes a records folder from finished runs (`pgolf export`); `readme`: its
README.md; `results`: one run's or one log's numbers (the log parser); `seeds`: a folder's
per-seed results (the reader verify, stats and export share); `stats`: the significance
test against a named baseline (`pgolf stats`); `verify`: the reviewer's check of any records
folder (`pgolf verify`).

Public face: the names below and the `results`, `stats` and `verify` modules. Modules inside this
package import their siblings, never this file.
"""

from __future__ import annotations

from pgolf.lab import lazy_face

# public name -> the member module that defines it (imported on first use, so `pgolf verify`
# or the static screen do not pay for torch when they import a sibling of a heavy module)
_FACE = {
    "ExportError": "folder",
    "check_runs": "folder",
    "export": "folder",
    "RECORD_TRACK": "readme",
    "technique_lines": "readme",
}
__all__ = sorted(_FACE)

__getattr__ = lazy_face(__name__, _FACE)
