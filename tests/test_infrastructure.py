"""The shared infrastructure of launch/, agent/ and the tests: one interpreter lookup, one child-process
class, one ``key=value`` override syntax."""
import json
import os
import signal
import sys
import time

import pytest

from agent.config import apply_overrides as agent_overrides
from bridge.errors import BridgeError, ConfigError, UnknownKeyError
from launch import interpreters
from launch.config import apply_overrides as launch_overrides
from launch.overrides import apply_overrides, parse_value
from launch.procs import ManagedProcess, NotReady, child_env, wait_log_line

# ------------------------------------------------------------------------------------- interpreters


@pytest.fixture
def envs(tmp_path, monkeypatch):
    """Writes an envs.json of the given interpreters and points $CZB_ENVS_JSON at it."""
    monkeypatch.delenv("CZB_SIM_PYTHON", raising=False)
    monkeypatch.delenv("CZB_TRAINER_PYTHON", raising=False)
    path = tmp_path / "envs.json"
    monkeypatch.setenv("CZB_ENVS_JSON", str(path))

    def write(**recorded):
        path.write_text(json.dumps(recorded))
        return str(path)

    return write


def test_interpreter_order_configured_then_recorded_venv_then_variable(envs, monkeypatch, tmp_path):
    recorded = sys.executable
    other = tmp_path / "python-from-variable"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    envs_path = envs(sim_python=recorded)
    monkeypatch.setenv("CZB_SIM_PYTHON", str(other))
    assert interpreters.find_sim_python("/opt/py", "interpreters.sim_python") == (
        "/opt/py", "interpreters.sim_python")
    path, why = interpreters.find_sim_python()
    assert path == recorded and envs_path in why  # the venv setup_envs built beats the variable
    envs()  # nothing recorded: the variable
    assert interpreters.find_sim_python() == (str(other), "$CZB_SIM_PYTHON")


def test_no_sim_interpreter_says_why_and_what_to_run(envs, monkeypatch):
    envs(sim_python="/nonexistent/python3.6")
    path, why = interpreters.find_sim_python()
    assert path is None and "/nonexistent/python3.6, which does not exist" in why
    assert "scripts/setup_envs.py" in why
    monkeypatch.setenv("CZB_SIM_PYTHON", "/nonexistent/python")
    assert interpreters.find_sim_python() == (
        None, "$CZB_SIM_PYTHON=/nonexistent/python is not an executable file")


def test_trainer_interpreter_falls_back_to_the_running_one(envs):
    envs()
    path, why = interpreters.find_trainer_python(fallback="/the/launcher/python")
    assert path == "/the/launcher/python" and "running interpreter" in why
    envs(trainer_python=sys.executable)
    assert interpreters.find_trainer_python()[0] == sys.executable

# ------------------------------------------------------------------------------------- processes


def test_a_managed_process_is_a_context_manager_that_stops_its_group(tmp_path):
    # the child starts a grandchild in its group, then prints its ready line
    script = ("import subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print('ready now', flush=True)\n"
              "time.sleep(60)\n")
    with ManagedProcess("sleeper", [sys.executable, "-c", script], tmp_path / "sleeper.log",
                        env=child_env()) as child:
        child.start()
        assert wait_log_line(child, "ready", time.monotonic() + 30) == "ready now"
        pid = child.pid
    assert child.returncode == -signal.SIGTERM
    assert child.stop() == -signal.SIGTERM  # idempotent
    deadline = time.monotonic() + 10  # the grandchild went with the group (once init reaps it)
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("a process of the stopped child's group is still alive")


def test_waiting_for_a_line_reports_an_early_exit_with_the_log(tmp_path):
    child = ManagedProcess("failing", [sys.executable, "-c", "import sys; sys.exit('no such world')"],
                           tmp_path / "failing.log")
    with child:
        child.start()
        with pytest.raises(NotReady, match="(?s)exited with 1 .*no such world"):
            wait_log_line(child, "ready", time.monotonic() + 30)
        # a second start appends to the log; only this start's lines count
        child.start()
        with pytest.raises(NotReady):
            wait_log_line(child, "=== ", time.monotonic() + 30)  # the previous start's header

# ------------------------------------------------------------------------------------- overrides


def test_one_override_syntax_for_the_launcher_and_the_trainer():
    config = {"clients": {"count": 1, "extra_args": []}, "rate": 0.1, "name": "x"}
    items = ["clients.count=3", "clients.extra_args=--tick,0.1", "rate=1e-4", "name="]
    expected = {"clients": {"count": 3, "extra_args": ["--tick", 0.1]}, "rate": 1e-4, "name": None}
    assert apply_overrides(config, items) == expected
    assert launch_overrides(config, items) == expected
    assert agent_overrides(config, items) == expected
    assert config["clients"]["count"] == 1  # the input is not changed


def test_override_errors_are_typed():
    config = {"ppo": {"n_steps": 64}, "seed": 0, "env": {"reset_options": None}}
    with pytest.raises(UnknownKeyError, match="unknown key 'sede'") as raised:
        apply_overrides(config, ["sede=1"])
    assert isinstance(raised.value, ConfigError) and isinstance(raised.value, ValueError)
    assert isinstance(raised.value, BridgeError)
    with pytest.raises(UnknownKeyError, match="'ppo.n_stpes'"):
        apply_overrides(config, ["ppo.n_stpes=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(config, ["seed"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(config, ["ppo..n_steps=1"])
    with pytest.raises(ConfigError, match="is a section"):
        apply_overrides(config, ["ppo=3"])
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        apply_overrides(config, ["seed.x=3"])
    with pytest.raises(ConfigError, match="cannot read"):
        apply_overrides(config, ["seed=[1, 2"])


def test_open_sections_take_new_keys_and_sections():
    config = {"ppo": {"n_steps": 64}, "env": {"reset_options": None}}
    out = apply_overrides(config, ["ppo.target_kl=0.02", "env.reset_options.random_start=false",
                                   "reward.speed=0.5"], open_sections=("ppo", "env", "reward"))
    assert out["ppo"] == {"n_steps": 64, "target_kl": 0.02}
    assert out["env"]["reset_options"] == {"random_start": False}
    assert out["reward"] == {"speed": 0.5}


def test_list_values():
    assert parse_value("64,64", as_list=True) == [64, 64]
    assert parse_value("[64, 64]", as_list=True) == [64, 64]
    assert parse_value("tcp://h:1,tcp://h:2", as_list=True) == ["tcp://h:1", "tcp://h:2"]
    assert parse_value("tcp://h:1,tcp://h:2") == "tcp://h:1,tcp://h:2"
    assert apply_overrides({"size": None}, ["size=32,48"], list_keys={"size"}) == {"size": [32, 48]}


def test_cluster_shorthand_and_its_checks():
    from launch.config import load_config

    assert load_config(None, []).cluster.kind == "local"
    config = load_config(None, ["cluster=ray", "cluster.address=auto"])
    assert (config.cluster.kind, config.cluster.address) == ("ray", "auto")
    with pytest.raises(ConfigError, match="cluster must be local or ray"):
        load_config(None, ["cluster=slurm"])
    with pytest.raises(ConfigError, match="max_restarts"):
        load_config(None, ["cluster.max_restarts=-1"])
