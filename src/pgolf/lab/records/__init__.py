"""Records folders, as the challenge's maintainers review them.

`folder`: `export` writes a records folder from finished runs (`pgolf export`); `readme`: its
README.md; `results`: one run's or one log's numbers (the log parser); `stats`: the significance
test against a named baseline (`pgolf stats`); `verify`: the reviewer's check of any records
folder (`pgolf verify`).

Public face: the names below and the `results`, `stats` and `verify` modules. Modules inside this
package import their siblings, never this file.
"""

from __future__ import annotations

from pgolf.lab.records.folder import ExportError, check_runs, export
from pgolf.lab.records.readme import RECORD_TRACK, technique_lines

__all__ = ["RECORD_TRACK", "ExportError", "check_runs", "export", "technique_lines"]
