"""Shared fixtures: the sim side's interpreter, free TCP endpoints, sim subprocesses stopped on teardown.

pytest loads this file under the trainer's Python 3.11 and, for tests/both/ and tests/sim/, under the
sim side's Python 3.6 too: 3.6 syntax, standard library and pytest only, no import of bridge/ or agent/.

Fixtures:
    sim_python       path of the sim side's interpreter (skips, or fails under CI=true, if there is none)
    trainer_python   sys.executable
    tcp_endpoint     "tcp://127.0.0.1:<free port>"
    sim_process      factory: sim_process(["-m", "carla_client", ...]) -> interpreters.SimProcess,
                     whose whole process group is killed on teardown
"""
import os
import sys

import pytest

try:
    from tests import interpreters  # tests/ is a package: tests import `from tests.interpreters import ...`
except ImportError:
    import interpreters  # tests/ without __init__.py: pytest put tests/ itself on sys.path

SimProcess = interpreters.SimProcess
describe_returncode = interpreters.describe_returncode
free_tcp_endpoint = interpreters.free_tcp_endpoint

try:
    from hypothesis import settings
except ImportError:  # hypothesis is in the [test] extra; conftest must still load without it
    pass
else:
    # No per-example deadline: a 2-core CI machine running two interpreters makes timings noisy, and
    # pytest-timeout already turns real hangs into failures.
    settings.register_profile("czb", deadline=None, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "czb"))


def pytest_report_header(config):
    path, why = interpreters.find_sim_python()
    envs = interpreters.read_envs()
    version = envs.get("sim_version") if path and path == envs.get("sim_python") else None
    return [
        "sim python: %s%s (%s)" % (path or "none", " [%s]" % version if version else "", why),
        "CI=true: a missing sim interpreter fails" if interpreters.is_ci() else
        "CI not set: a missing sim interpreter skips",
    ]


def pytest_collection_modifyitems(config, items):
    # Anything that runs the sim interpreter is cross-version: `-m "not crossversion"` deselects it.
    for item in items:
        if {"sim_python", "sim_process"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.crossversion)


@pytest.fixture(scope="session")
def sim_python():
    """Path of the sim side's interpreter (the .venvs/sim-3.6 venv, or $CZB_SIM_PYTHON)."""
    path, why = interpreters.find_sim_python()
    if path is None:
        msg = "no sim-side interpreter: " + why
        if interpreters.is_ci():
            pytest.fail(msg + " (CI=true: this is a failure, not a skip)", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def trainer_python():
    """The trainer's interpreter: the one running pytest."""
    return sys.executable


@pytest.fixture
def tcp_endpoint():
    """A loopback endpoint on a port that was free a moment ago."""
    return free_tcp_endpoint()


@pytest.fixture
def sim_process(request, tmp_path):
    """Factory that starts child processes and always stops them (process group) on teardown.

    start(args, python=None, env=None, name="sim") runs ``<python> <args>`` from the repo root with
    PYTHONPATH=<repo root>; python defaults to the sim interpreter (skipping the test if there is none).
    Each child's output goes to <tmp_path>/<name>-<n>.log; its tail is printed on teardown, which pytest
    shows when the test fails.
    """
    started = []

    def start(args, python=None, env=None, name="sim"):
        if python is None:
            python = request.getfixturevalue("sim_python")
        log_path = str(tmp_path / ("%s-%d.log" % (name, len(started))))
        proc = SimProcess(args, python, log_path, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        returncode = proc.stop()
        print("--- %s exited with %s; last lines of %s:\n%s"
              % (" ".join(proc.args), describe_returncode(returncode), proc.log_path, proc.log_tail()))
