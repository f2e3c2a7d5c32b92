"""Shared fixtures: the sim side's interpreter, free TCP endpoints, sim subprocesses stopped on teardown.

pytest loads this file under the trainer's Python 3.11 and, for tests/both/ and tests/sim/, under the
sim side's Python 3.6 too: 3.6 syntax, standard library and pytest only at import time. The interpreter
lookup is launch.interpreters (3.6-safe); the process fixture imports launch.procs when first used,
which only trainer-side tests do.

Fixtures:
    sim_python       path of the sim side's interpreter (skips, or fails under CI=true, if there is none)
    trainer_python   sys.executable
    tcp_endpoint     "tcp://127.0.0.1:<free port>"
    sim_process      factory: sim_process(["-m", "carla_client", ...]) -> a started
                     launch.procs.ManagedProcess, whose whole process group is killed on teardown
"""
import os
import socket
import sys

import pytest

from launch import interpreters


def is_ci():
    """True under CI (CI=true), where a missing sim interpreter is a failure instead of a skip."""
    return os.environ.get("CI", "").lower() == "true"

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
        "CI=true: a missing sim interpreter fails" if is_ci() else
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
        if is_ci():
            pytest.fail(msg + " (CI=true: this is a failure, not a skip)", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def trainer_python():
    """The trainer's interpreter: the one running pytest."""
    return sys.executable


@pytest.fixture
def builtin_endpoint(sim_process):
    """A built-in world carla_client under the sim interpreter, answering bridge pings: its endpoint."""
    import time

    from launch.procs import NotReady, free_tcp_endpoint, wait_bridge

    endpoint = free_tcp_endpoint()
    proc = sim_process(["-m", "carla_client", "--world", "builtin", "--bind", endpoint])
    try:
        wait_bridge(endpoint, time.monotonic() + 30.0, proc)
    except NotReady as e:
        pytest.fail("%s:\n%s" % (e, proc.log_tail()))
    return endpoint


@pytest.fixture
def tcp_endpoint():
    """A loopback endpoint on a port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return "tcp://127.0.0.1:%d" % sock.getsockname()[1]


@pytest.fixture
def sim_process(request, tmp_path):
    """Factory that starts child processes and always stops them (process group) on teardown.

    start(args, python=None, env=None, name="sim") runs ``<python> <args>`` from the repo root with
    PYTHONPATH=<repo root>; python defaults to the sim interpreter (skipping the test if there is none).
    Each child's output goes to <tmp_path>/<name>-<n>.log; its tail is printed on teardown, which pytest
    shows when the test fails.
    """
    from launch.procs import ManagedProcess, child_env, describe_exit

    started = []

    def start(args, python=None, env=None, name="sim"):
        if python is None:
            python = request.getfixturevalue("sim_python")
        log_path = tmp_path / ("%s-%d.log" % (name, len(started)))
        proc = ManagedProcess(name, [python] + list(args), log_path, env=child_env(env),
                              cwd=interpreters.REPO_ROOT)
        started.append(proc)
        proc.start()
        return proc

    yield start
    for proc in started:
        returncode = proc.stop(timeout=5.0)
        print("--- %s exited with %s; last lines of %s:\n%s"
              % (" ".join(proc.argv), describe_exit(returncode), proc.log_path, proc.log_tail(40)))
