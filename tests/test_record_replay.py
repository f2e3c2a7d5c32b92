"""agent.record and agent.replay: Minari datasets recorded through the bridge (the world under the
sim interpreter), loaded in a fresh process, and replayed byte for byte; one changed byte is found."""
import json
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from agent.record import main as record_main
from agent.replay import difference, main as replay_main
from bridge import protocol
from launch.interpreters import REPO_ROOT
from launch.procs import child_env, free_tcp_endpoint, wait_bridge

DATASET = "carla/builtin/test-v0"
SENSORS = [{"name": "camera", "type": "sensor.camera.rgb", "view": "chase", "width": 40,
            "height": 32, "fov": 90},
           {"name": "collision", "type": "sensor.other.collision"},
           {"name": "lane_invasion", "type": "sensor.other.lane_invasion"}]
ENV = ["env.max_episode_steps=40", "env.camera=auto", "env.camera_size=[32,40]", "env.reset_options.random_start=true"]


@pytest.fixture
def datasets(tmp_path, monkeypatch):
    """MINARI_DATASETS_PATH in a temporary directory (for this process and its children)."""
    path = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


@pytest.fixture
def sim(sim_process, tmp_path):
    """The built-in world with NPCs and a 32x40 camera, served under the sim interpreter."""
    sensors = tmp_path / "sensors.json"
    sensors.write_text(json.dumps(SENSORS))
    endpoint = free_tcp_endpoint()
    proc = sim_process(["-m", "carla_client", "--world", "builtin", "--bind", endpoint, "--npc", "3",
                        "--seed", "2", "--sensors", str(sensors)])
    wait_bridge(endpoint, time.monotonic() + 60.0, proc)
    return endpoint


@pytest.fixture
def recorded(datasets, sim):
    """Two random episodes with infos, recorded over the bridge."""
    assert record_main(["--random", "--episodes", "2", "--dataset-id", DATASET, "--endpoint", sim,
                        "--infos", "--seed", "7", *ENV]) == 0
    return datasets / DATASET / "data" / "main_data.hdf5"


def load_in_fresh_process(dataset_id):
    code = """if True:
        import json, minari
        d = minari.load_dataset(%r)
        meta = d.storage.metadata
        episodes = list(d.iterate_episodes())
        print(json.dumps({
            "episodes": d.total_episodes, "steps": d.total_steps,
            "algorithm": meta["algorithm_name"], "bridge": meta["carla_zmq_bridge"],
            "env_id": d.env_spec.id, "env_kwargs": d.env_spec.kwargs,
            "seeds": [m["seed"] for m in d.storage.get_episode_metadata(range(d.total_episodes))],
            "camera": list(episodes[0].observations["camera"].shape),
            "actions": list(episodes[0].actions.shape), "rewards": len(episodes[0].rewards),
            "info_keys": sorted(episodes[0].infos or {})}))
    """ % dataset_id
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_recorded_dataset_loads_in_a_fresh_process_with_its_metadata(recorded, datasets):
    assert recorded.is_file()
    loaded = load_in_fresh_process(DATASET)
    assert loaded["episodes"] == 2 and loaded["steps"] > 2
    assert loaded["algorithm"] == "random"
    assert loaded["env_id"] == "CarlaBridge-v0" and loaded["env_kwargs"]["camera_size"] == [32, 40]
    assert loaded["seeds"] == [7, 8]
    world = loaded["bridge"]["world"]
    assert world["name"] == "builtin" and world["deterministic"] is True
    assert world["settings"]["seed"] == 2 and world["settings"]["npc_vehicles"] == 3
    assert [s["name"] for s in world["settings"]["sensors"]] == ["camera", "collision",
                                                                 "lane_invasion"]
    assert loaded["bridge"]["infos"] is True
    assert loaded["bridge"]["bridge_protocol"] == protocol.version_string()
    steps = loaded["rewards"]
    assert loaded["camera"] == [steps + 1, 32, 40, 3] and loaded["actions"] == [steps, 2]
    assert {"measurements", "frame", "sim_time", "reward_terms"} <= set(loaded["info_keys"])


def test_replay_is_identical_and_a_single_changed_byte_is_located(recorded, capsys):
    # no --endpoint: the replay starts the recorded world (seed 2, 3 NPCs, the sensors) itself
    assert replay_main(["--dataset-id", DATASET]) == 0
    out = capsys.readouterr().out
    assert out.startswith("identical: 2 episodes")
    assert "observations/camera" in out and "infos/measurements/speed" in out

    with h5py.File(recorded, "r+") as f:
        camera = f["episode_1/observations/camera"]
        pixel = camera[5]
        pixel[3, 4, 1] ^= 0x01  # one bit of one byte
        camera[5] = pixel
    assert replay_main(["--dataset-id", DATASET]) == 1
    assert capsys.readouterr().out.strip() == (
        "diverged: episode 1, step 5, field observations/camera, max difference 1")
    assert replay_main(["--dataset-id", DATASET, "--episode", "0"]) == 0  # episode 0 is untouched


def test_replay_finds_a_changed_measurement_and_reward(recorded, capsys, sim):
    with h5py.File(recorded, "r+") as f:
        speed = f["episode_0/infos/measurements/speed"]
        speed[9] = np.nextafter(speed[9], np.inf)  # the smallest possible change
    assert replay_main(["--dataset-id", DATASET, "--endpoint", sim]) == 1
    assert "diverged: episode 0, step 9, field infos/measurements/speed" in capsys.readouterr().out
    with h5py.File(recorded, "r+") as f:
        speed = f["episode_0/infos/measurements/speed"]
        speed[9] = np.nextafter(speed[9], -np.inf)  # undone
        f["episode_0/rewards"][3] += 0.5
    assert replay_main(["--dataset-id", DATASET, "--endpoint", sim]) == 1
    assert "episode 0, step 4, field rewards, max difference 0.5" in capsys.readouterr().out


def test_a_world_without_determinism_gets_statistics_not_a_failure(recorded, capsys):
    metadata = recorded.parent / "metadata.json"
    content = json.loads(metadata.read_text())
    content["carla_zmq_bridge"]["world"]["deterministic"] = False  # as a CARLA recording says
    metadata.write_text(json.dumps(content))
    with h5py.File(recorded, "r+") as f:
        f["episode_0/observations/camera"][2] = 255 - f["episode_0/observations/camera"][2]
    assert replay_main(["--dataset-id", DATASET]) == 0
    out = capsys.readouterr().out
    assert "first difference: episode 0, step 2, field observations/camera" in out
    row = next(line for line in out.splitlines() if line.startswith("| observations/camera |"))
    assert row.split("|")[3].strip() == "1"  # one step differed, and the replay went on


def test_record_refuses_an_existing_dataset_and_replay_an_unknown_one(recorded, sim, capsys):
    assert record_main(["--random", "--episodes", "1", "--dataset-id", DATASET,
                        "--endpoint", sim]) == 2
    assert "already exists" in capsys.readouterr().err
    assert replay_main(["--dataset-id", "carla/builtin/missing-v0"]) == 2


def test_record_with_a_model_and_replay_across_interpreters(datasets, sim, tmp_path, capsys):
    """A PPO model's episodes recorded in this interpreter's world (in process) replay identically
    on the sim interpreter's world: the built-in world is bit-identical across Python versions."""
    from agent.config import load_config
    from agent.train import build_model, env_kwargs
    from agent.vec import make_vec_env

    config = load_config(overrides=["policy.cnn_dim=16"])
    venv = make_vec_env(["inprocess://builtin"], **env_kwargs(config))
    try:
        build_model(config, venv).save(tmp_path / "model.zip")
    finally:
        venv.close()
    assert record_main(["--model", str(tmp_path / "model.zip"), "--stochastic", "--episodes", "1",
                        "--dataset-id", "carla/builtin/model-v0", "--endpoint",
                        "inprocess://builtin", "--config", str(REPO_ROOT + "/agent/configs/ppo.yaml"),
                        "env.max_episode_steps=30"]) == 0
    import minari

    assert minari.load_dataset("carla/builtin/model-v0").storage.metadata[
        "algorithm_name"].startswith("PPO (model.zip")
    assert replay_main(["--dataset-id", "carla/builtin/model-v0"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("identical: 1 episodes, 30 steps")


def test_training_records_while_it_trains(datasets, tmp_path):
    command = [sys.executable, "-m", "agent.train", "--run-name", "rec", f"runs_dir={tmp_path}",
               "endpoints=inprocess://builtin", "total_timesteps=128", "ppo.n_steps=64",
               "ppo.batch_size=32", "ppo.n_epochs=1", "progress_bar=false", "policy.cnn_dim=16",
               "env.max_episode_steps=25", "env.camera=auto", "record.dataset_id=carla/builtin/train-v0"]
    env = child_env({"MINARI_DATASETS_PATH": str(datasets)})
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = load_in_fresh_process("carla/builtin/train-v0")
    assert loaded["steps"] == 128 and loaded["episodes"] >= 5  # 25-step episodes, last one cut
    assert loaded["algorithm"] == "PPO (recorded while training)"


def test_difference_is_none_only_for_the_same_bytes():
    assert difference(np.float32(1.5), np.float32(1.5)) is None
    assert difference(np.float32(1.5), np.float64(1.5)) == 0.0  # same value, other bytes
    assert difference(np.array([0.0]), np.array([-0.0])) == 0.0
    assert difference(np.array([1, 2]), np.array([1, 5])) == 3.0
    assert difference(np.array([np.nan]), np.array([np.nan])) is None
    assert difference(np.array([np.nan]), np.array([1.0])) == float("inf")
    assert difference(np.zeros(3), np.zeros(4)) == float("inf")
