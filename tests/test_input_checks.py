"""Every command-line and config input is checked: exit 2, one clear line, no traceback, nothing written.

Also the launcher's CurveZMQ plumbing (``curve: DIR``) and ``launch doctor``'s key checks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.keys import create_keys
from launch import commands
from launch.config import REPO_ROOT, load_config
from launch.doctor import check_curve


def run_in(directory: Path, python: str, *args: str) -> tuple[int, list[str]]:
    """Runs ``python -m ...`` in ``directory``; (exit code, non-empty stderr lines)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([python, "-m", *args], cwd=directory, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()]


def assert_refused(directory: Path, python: str, *args: str, says: str) -> None:
    before = sorted(p.name for p in directory.iterdir())
    code, lines = run_in(directory, python, *args)
    assert code == 2, (args, lines)
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert says in lines[0], lines
    assert sorted(p.name for p in directory.iterdir()) == before, "something was written"


@pytest.mark.parametrize("args, says", [
    (["--bind", "tcp://127.0.0.1:99999"], "port 99999 is outside 1-65535"),
    (["--bind", "tcp://127.0.0.1:-3"], "bad endpoint"),
    (["--port", "70000"], "--port 70000 is outside 1-65535"),
    (["--tm-port", "0"], "--tm-port 0 is outside 1-65535"),
    (["--idle-timeout", "0"], "--idle-timeout must be a positive number"),
    (["--idle-timeout", "-5"], "--idle-timeout must be a positive number"),
    (["--bind", "tcp://0.0.0.0:5556", "--allow-remote"], "without authentication"),
    (["--bind", "tcp://0.0.0.0:5556"], "--allow-remote"),
    (["--curve", "no-such-dir"], "missing CURVE key file"),
])
def test_carla_client_refuses_bad_options(tmp_path, sim_python, args, says):
    assert_refused(tmp_path, sim_python, "carla_client", *args, says=says)


def test_carla_client_refuses_huge_cameras(tmp_path, sim_python):
    sensors = tmp_path / "sensors.json"
    sensors.write_text(json.dumps([{"name": "cam", "type": "sensor.camera.rgb",
                                    "width": 100000, "height": 100000}]))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, lines = run_in(tmp_path, sim_python, "carla_client", "--sensors", str(sensors))
    assert code == 2 and len(lines) == 1 and "Traceback" not in lines[0]
    assert "width must be a whole number of pixels in 1-4096" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("args, says", [
    (["bogus=1"], "unknown key 'bogus'"),
    (["ppo.bogus=1"], "unknown key ppo.bogus"),
    (["env.bogus=1"], "unknown key env.bogus"),
    (["total_timesteps=abc"], "total_timesteps must be int"),
    (["ppo.n_steps=many"], "ppo.n_steps must be int"),
    (["reward.speed=yes"], "reward.speed must be float"),
    (["env.camera_size=[100000,100000]"], "each 1-4096"),
    (["endpoints=tcp://127.0.0.1:99999"], "port 99999 is outside 1-65535"),
    (["total_timesteps=0"], "total_timesteps must be at least 1"),
    (["--config", "bad.yaml"], "bad.yaml: not valid YAML at line 3"),
    (["--resume", "runs/nothing"], "no such checkpoint or run directory"),
])
def test_the_trainer_refuses_bad_keys_and_files(tmp_path, monkeypatch, capsys, args, says):
    from agent.train import main
    (tmp_path / "bad.yaml").write_text("env:\n  timeout: [1,\n")
    assert_refused_in_process(tmp_path, monkeypatch, capsys, main, args, says)


def assert_refused_in_process(directory, monkeypatch, capsys, main, args, says):
    """As assert_refused, for a trainer-side main() called in this process (no torch import each)."""
    monkeypatch.chdir(directory)
    before = sorted(p.name for p in directory.iterdir())
    capsys.readouterr()
    assert main(list(args)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert says in lines[0], lines
    assert sorted(p.name for p in directory.iterdir()) == before, "something was written"


@pytest.mark.parametrize("args, says", [
    (["up", "--config", "bad.yaml"], "not valid YAML"),
    (["up", "--resume", "runs/nothing"], "no such run directory or checkpoint"),
    (["up", "clients.base_port=70000"], "1-65535"),
    (["up", "bogus=1"], "unknown key"),
])
def test_the_launcher_refuses_bad_input_before_writing_logs(tmp_path, monkeypatch, capsys, args,
                                                            says):
    from launch.__main__ import main
    (tmp_path / "bad.yaml").write_text("clients: {count: 2\n")
    assert_refused_in_process(tmp_path, monkeypatch, capsys, main, args, says)


def test_the_launcher_passes_curve_to_both_sides(tmp_path):
    keys = tmp_path / "keys"
    create_keys(str(keys))
    config = load_config(None, [f"curve={keys}"])
    client = commands.client_argv(config, 0, "python3.6")
    assert client[client.index("--curve") + 1] == str(keys.resolve())
    trainer = commands.trainer_argv(config, "python3", "run", tmp_path, ["tcp://127.0.0.1:5556"], [])
    assert f"env.curve={keys.resolve()}" in trainer
    assert "--curve" not in commands.client_argv(load_config(), 0, "python3.6")
    rows = check_curve(config, sys.executable)
    assert [r.status for r in rows] == ["ok", "ok"], rows
    os.chmod(keys / "server.key_secret", 0o644)
    os.remove(keys / "client.key_secret")
    rows = check_curve(config, None)
    assert "readable by others" in rows[0].detail and "missing CURVE key file" in rows[1].detail
    remote = load_config(None, ["clients.host=0.0.0.0"])
    assert check_curve(remote, None)[0].status == "FAIL"
