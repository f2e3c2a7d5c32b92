"""Smoke runs of `python -m agent.train` and `python -m agent.evaluate` against a real sim process."""
import signal
import subprocess
import sys
import time

import pytest
import yaml

from agent.status import read_status

from launch.interpreters import REPO_ROOT
from launch.procs import child_env

TINY = ["ppo.n_steps=64", "ppo.batch_size=32", "ppo.n_epochs=1", "checkpoint_every=128",
        "progress_bar=false", "env.max_episode_steps=100", "policy.cnn_dim=32"]


def agent_command(module, *args):
    return [sys.executable, "-m", module, *args]


def run(command, timeout=120):
    result = subprocess.run(command, cwd=REPO_ROOT, env=child_env(), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [e.step for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


@pytest.fixture
def endpoint(builtin_endpoint):
    return builtin_endpoint


def test_train_checkpoint_resume_tensorboard_and_evaluate(endpoint, tmp_path):
    runs = tmp_path / "runs"
    common = [f"endpoints={endpoint}", f"runs_dir={runs}", *TINY]
    first = run(agent_command("agent.train", "--run-name", "smoke", "total_timesteps=256", *common))
    assert "step 128/256" in first.stderr and "step 256/256" in first.stderr  # progress in the log
    run_dir = runs / "smoke"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "model.zip").is_file()
    # the status channel the launcher's console reads, and the device `device: auto` resolved to
    status = read_status(run_dir / "status.json")
    assert status["phase"] == "finished" and status["num_timesteps"] == 256
    assert status["total_timesteps"] == 256 and status["episodes"] >= 1 and status["steps_per_second"] > 0
    assert status["device"] == "cpu" and status["last_episode"]["length"] > 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["device"] == "auto" and config["resolved_device"] == "cpu"  # no GPU in CI
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["ppo_128_steps.zip", "ppo_256_steps.zip"]

    run(agent_command("agent.train", "--resume", str(run_dir / "checkpoints" / "ppo_256_steps.zip"),
                      "total_timesteps=512", f"endpoints={endpoint}"))
    assert (run_dir / "checkpoints" / "ppo_512_steps.zip").is_file()
    tags = scalars(run_dir)
    for tag in ("rollout/ep_rew_mean", "train/loss", "reward/progress", "episode/return",
                "episode/route_completion", "episode/collisions", "episode/lane_invasions",
                "episode/mean_speed", "bridge/round_trip_p50_ms", "bridge/round_trip_p99_ms",
                "bridge/sim_ticks_per_s"):
        assert tag in tags, f"{tag} missing; logged: {sorted(tags)}"
    steps = tags["time/fps"]
    assert max(steps) == 512 and steps == sorted(steps)  # the resumed run continued the count

    video = tmp_path / "eval.mp4"
    result = run(agent_command("agent.evaluate", "--model", str(run_dir / "model.zip"),
                               "--episodes", "2", "--video", str(video), "--endpoint", endpoint,
                               "env.max_episode_steps=20"))
    assert "lap" in result.stdout and video.stat().st_size > 1000


def test_time_limit_ends_training_and_saves_the_model(endpoint, tmp_path):
    runs = tmp_path / "runs"
    result = run(agent_command("agent.train", "--run-name", "timed", "total_timesteps=1000000",
                               "time_limit_minutes=0.02", f"endpoints={endpoint}", f"runs_dir={runs}",
                               *TINY))
    assert "time limit of 0.02 min reached at step" in result.stderr
    assert (runs / "timed" / "model.zip").is_file()
    status = read_status(runs / "timed" / "status.json")
    assert status["phase"] == "finished" and 0 < status["num_timesteps"] < 1000000


def test_sigterm_saves_a_checkpoint(endpoint, tmp_path, sim_process):
    runs = tmp_path / "runs"
    proc = sim_process(["-m", "agent.train", "--run-name", "interrupted", "total_timesteps=1000000",
                        f"endpoints={endpoint}", f"runs_dir={runs}", *TINY, "checkpoint_every=1000000"],
                       python=sys.executable, name="trainer")
    deadline = time.monotonic() + 90
    # training has started once TensorBoard has an event file with a dumped iteration
    while not any(p.stat().st_size > 200 for p in (runs / "interrupted").glob("events.*")):
        assert proc.alive(), proc.log_tail(40)
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    proc.send(signal.SIGTERM)
    assert proc.wait(60) == 130, proc.log_tail(40)
    saved = list((runs / "interrupted" / "checkpoints").glob("ppo_*_steps.zip"))
    assert len(saved) == 1 and int(saved[0].name.split("_")[1]) >= 64
