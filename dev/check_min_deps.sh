#!/usr/bin/env bash
# Install the minimum version of every dependency pyproject.toml declares (`name>=X` -> `name==X`;
# torch excepted: the CPU build 2.13.0 that install.sh uses, found on local disk) into a fresh
# virtual environment, then run the artifact tests there, so a `>=` the code has outgrown (issue
# 7: brotli 1.1 lacks the output bound the loader needs) fails here instead of on a user's machine.
# Usage: dev/check_min_deps.sh [pytest args...]   (default: tests/test_artifact.py)
# VENV=dir sets the environment's folder (default .venv-mindeps, git-ignored; recreated each run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$root/.venv-mindeps}
python3 -m venv --clear "$venv"
py=$venv/bin/python
mapfile -t pins < <("$py" - "$root/pyproject.toml" <<'PY'
import re, sys, tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
    name, op, ver = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(>=|==|~=)?\s*([^,;\s]*)", req).groups()
    if name == "torch":
        print("torch==2.13.0")
    elif name != "ruff":  # a linter: not needed to run tests
        print(f"{name}=={ver}" if op else name)
PY
)
echo "installing: ${pins[*]}"
# The machine-wide constraints file may cap versions; the minimums are what we ask for here.
PIP_CONSTRAINT="" "$py" -m pip install -q "${pins[@]}"
"$py" -m pip install -q --no-deps -e "$root"
"$py" -m pip list --format=freeze | grep -i -E "^(torch|numpy|brotli|zstandard|pytest|hypothesis)="
cd "$root"
PYTHONPATH="$root/src:$root/tests" "$py" -m pytest -q -p no:cacheprovider "${@:-tests/test_artifact.py}"
