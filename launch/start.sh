#!/usr/bin/env bash
# One click: launch/start.sh [--keep-tensorboard] [key=value ...] [-- trainer key=value ...]
# Same as `python -m launch up ...` under the trainer's venv, from the repository root (runs/ lands there).
# The venvs are built on first use (scripts/setup_envs.py; later a fast no-op, so it is skipped here).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if [ ! -f .venvs/envs.json ]; then
  echo "start.sh: first run: building .venvs/ with scripts/setup_envs.py (needs python3 and Python 3.6)" >&2
  python3 scripts/setup_envs.py
fi
PY="${CZB_TRAINER_PYTHON:-$REPO/.venvs/trainer/bin/python}"
if [ ! -x "$PY" ]; then
  echo "start.sh: no trainer interpreter at $PY: run python3 scripts/setup_envs.py" >&2
  exit 2
fi
export PYTHONPATH="$REPO"
# exec: Ctrl-C and SIGTERM go straight to the launcher, which stops its children in order.
exec "$PY" -m launch up "$@"
