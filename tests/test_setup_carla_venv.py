"""The Python 3.7 venv with the real carla 0.9.15 client (issue 8): what setup_envs records, and
that CI fails when that venv or its test run cannot happen, while a developer's machine only warns."""
import importlib.util
import json
import os
import subprocess

import pytest

from launch.interpreters import REPO_ROOT, read_envs


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "scripts", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def setup_envs():
    return load_script("setup_envs")


def test_a_missing_python_37_fails_under_ci_and_warns_elsewhere(setup_envs, monkeypatch, tmp_path,
                                                                  capsys):
    monkeypatch.setattr(setup_envs, "find_by_version", lambda version: None)
    monkeypatch.delenv("CZB_CARLA_SIM_PYTHON", raising=False)
    args = setup_envs.parse_args(["--with-carla-sim", "--venv-dir", str(tmp_path)])
    monkeypatch.setenv("CI", "true")
    failures = setup_envs.build_carla_sim(args, str(tmp_path))
    assert len(failures) == 1 and "Python 3.7" in failures[0]
    monkeypatch.setenv("CI", "")
    assert setup_envs.build_carla_sim(args, str(tmp_path)) == []
    assert "WARNING" in capsys.readouterr().out


def test_a_missing_carla_run_fails_under_ci_and_warns_elsewhere(monkeypatch):
    run_tests = load_script("run_tests")
    monkeypatch.setenv("CI", "true")
    assert run_tests.missing_interpreter("CARLA client run", "no venv", "skipped") == [
        ("CARLA client run", False, None)]
    monkeypatch.setenv("CI", "")
    assert run_tests.missing_interpreter("CARLA client run", "no venv", "skipped") == []


def test_the_recorded_carla_venv_runs_python_37_with_carla_0915():
    envs = read_envs()
    python = envs.get("carla_sim_python")
    if not python:
        if os.environ.get("CI") == "true":
            pytest.fail("no carla_sim_python in envs.json under CI=true")
        pytest.skip("no .venvs/sim-3.7: run `python3 scripts/setup_envs.py --with-carla-sim`")
    out = subprocess.run([python, "-m", "carla_client.client_version"], cwd=REPO_ROOT,
                         stdout=subprocess.PIPE, timeout=120, check=True).stdout.decode()
    found = json.loads(out.splitlines()[-1])
    assert found["python"].startswith("3.7.") and found["carla"] == "0.9.15"
    assert envs.get("carla_sim_carla") == "0.9.15"
