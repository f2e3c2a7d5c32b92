"""Where the sim side's and the trainer's interpreters are: one lookup, one order, for every caller.

Order, for each side: an interpreter named explicitly (a launcher config key, a caller's argument),
then the venv that scripts/setup_envs.py built and recorded in ``.venvs/envs.json`` (``$CZB_ENVS_JSON``
names another file), then ``$CZB_SIM_PYTHON`` / ``$CZB_TRAINER_PYTHON`` (an interpreter that already has
the side's packages). The recorded venv comes before the variable because setup_envs.py builds the venv
*from* ``$CZB_SIM_PYTHON`` and installs the packages into it.

Used by the launcher, ``agent.bench`` and the tests' fixtures, which pytest also loads under the sim
side's Python 3.6: Python 3.6 syntax and the standard library only.
"""
import json
import os
import sys
from typing import Dict, Optional, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ENVS_JSON = os.path.join(REPO_ROOT, ".venvs", "envs.json")
SETUP_HINT = "run `python3 scripts/setup_envs.py` (builds .venvs/ and records them in .venvs/envs.json)"


def envs_json_path() -> str:
    """The envs.json written by scripts/setup_envs.py (``$CZB_ENVS_JSON`` overrides the default)."""
    return os.environ.get("CZB_ENVS_JSON") or DEFAULT_ENVS_JSON


def read_envs() -> Dict[str, str]:
    """The recorded interpreters (``{"sim_python": ..., "trainer_python": ..., ...}``), or {}."""
    try:
        with open(envs_json_path()) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _find(side: str, configured: Optional[str], configured_as: str) -> Tuple[Optional[str], str]:
    if configured:
        return configured, configured_as
    envs_path = envs_json_path()
    recorded = read_envs().get(side + "_python")
    if recorded and os.access(recorded, os.X_OK):
        return recorded, "the {} venv recorded in {}".format(side, envs_path)
    variable = "CZB_{}_PYTHON".format(side.upper())
    from_env = os.environ.get(variable)
    if from_env:
        if os.access(from_env, os.X_OK):
            return from_env, "$" + variable
        return None, "${}={} is not an executable file".format(variable, from_env)
    if recorded:
        why = "{} names {}, which does not exist".format(envs_path, recorded)
    else:
        why = "no {}_python in {} and ${} is unset".format(side, envs_path, variable)
    return None, why + "; " + SETUP_HINT


def find_sim_python(configured: Optional[str] = None, configured_as: str = "the configuration"
                    ) -> Tuple[Optional[str], str]:
    """Finds the sim side's interpreter (see the module docstring for the order).

    Args:
        configured: an interpreter named explicitly; it wins, unchecked (the caller reports a bad one).
        configured_as: where ``configured`` came from, for the returned sentence.

    Returns:
        (path or None, a sentence saying where it came from or why none was found).
    """
    return _find("sim", configured, configured_as)


def find_trainer_python(configured: Optional[str] = None, configured_as: str = "the configuration",
                        fallback: Optional[str] = None) -> Tuple[str, str]:
    """Finds the trainer's interpreter like find_sim_python; else ``fallback`` (default: this one)."""
    path, why = _find("trainer", configured, configured_as)
    if path is None:
        return fallback or sys.executable, "the running interpreter ({})".format(why.split(";")[0])
    return path, why
