"""Minari datasets of bridge episodes: a recording wrapper, the writer behind it, and the metadata an
exact replay needs (the sim's world, its settings and every episode's seed).

Storage is Minari's HDF5 format with ``jpeg_encoding=False``: camera frames are kept byte for byte
(Minari's default JPEG encoding is lossy, and a replay could never match it). Each episode is written
when it ends, so memory holds one episode per env however long the recording runs.

Recorded per step (Minari's layout: observations have one more entry than actions): the env's
observations, the actions exactly as sent (cast to the action space's dtype first), rewards,
terminations and truncations; with ``infos`` also ``frame`` and ``sim_time`` (relative to the reset),
the sim's raw ``measurements``, the ``reward_terms``, and the ``collisions``/``lane_invasions``
counts. Each episode's metadata holds the sim seed it was reset with.
"""
from __future__ import annotations

import getpass
import logging
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec

from agent import ENV_ID
from agent.reward import TERMS
from bridge import protocol

log = logging.getLogger(__name__)

#: the key of the dataset metadata that holds what this package adds (world, settings, recorder).
METADATA_KEY = "carla_zmq_bridge"
DATA_FORMAT = "hdf5"
ENTRY_POINT = "agent.env:CarlaBridgeEnv"


def package_version() -> str:
    try:
        return version("carla-zmq-bridge")
    except PackageNotFoundError:
        return "unknown"


def env_spec(endpoint: str, env_kwargs: dict[str, Any]) -> EnvSpec:
    """The EnvSpec that ``gymnasium.make`` would give an env built with these arguments."""
    return EnvSpec(ENV_ID, entry_point=ENTRY_POINT, kwargs={"endpoint": endpoint, **env_kwargs})


def dataset_exists(dataset_id: str) -> bool:
    """True when a local dataset (under $MINARI_DATASETS_PATH or ~/.minari/datasets) has this id."""
    from minari.storage.datasets_root_dir import get_dataset_path

    return get_dataset_path(dataset_id).exists()


def info_record(info: dict[str, Any], measurements: dict[str, Any]) -> dict[str, Any]:
    """One step's info in a fixed structure (Minari needs the same keys and shapes every step)."""
    return {
        "frame": np.int64(info.get("frame", 0)),
        "sim_time": np.float64(info.get("sim_time", 0.0)),
        "measurements": {k: np.asarray(v) for k, v in sorted(measurements.items())},
        "reward_terms": {t: np.float64(info.get(f"reward_{t}", 0.0)) for t in TERMS},
        "collisions": np.int64(info.get("collisions", 0)),
        "lane_invasions": np.int64(info.get("lane_invasions", 0)),
    }


def _stack(items: list[Any]) -> Any:
    """A list of (nested dicts of) arrays as (nested dicts of) stacked arrays."""
    if isinstance(items[0], dict):
        return {k: _stack([item[k] for item in items]) for k in items[0]}
    return np.stack([np.asarray(item) for item in items])


class DatasetWriter:
    """Writes finished episodes into one new Minari dataset, created with the first episode.

    Args:
        dataset_id: e.g. ``carla/builtin/ppo-v0`` (namespace ``carla/builtin``).
        algorithm_name: what chose the actions, e.g. ``"random"`` or ``"PPO (model.zip)"``.
        record_infos: whether episodes carry infos (all of them must agree).
        description: free text for the dataset.
        extra: more entries for this package's metadata (e.g. the recording's base seed).
        append: add to the dataset if it exists already (a resumed training run) instead of failing.

    Raises:
        FileExistsError: a dataset with this id already exists and ``append`` is False (Minari
            never overwrites).
    """

    def __init__(self, dataset_id: str, algorithm_name: str, record_infos: bool,
                 description: str | None = None, extra: dict[str, Any] | None = None,
                 append: bool = False) -> None:
        self.dataset: Any = None
        if dataset_exists(dataset_id) and append:
            import minari

            self.dataset = minari.load_dataset(dataset_id)
        elif dataset_exists(dataset_id):
            raise FileExistsError(f"a Minari dataset {dataset_id!r} already exists; choose another "
                                  "name or version (e.g. -v1), or delete it with "
                                  f"`minari delete {dataset_id}`")
        self.dataset_id = dataset_id
        self.algorithm_name = algorithm_name
        self.record_infos = record_infos
        self.description = description or (
            f"{ENV_ID} episodes recorded through carla-zmq-bridge ({algorithm_name})")
        self.extra = dict(extra or {})
        self.episodes = 0
        self.steps = 0

    def metadata(self, env: gym.Env) -> dict[str, Any]:
        """What this package adds to Minari's metadata: the sim's world and settings, the recorder."""
        info = env.unwrapped.server_info
        return {"world": {"name": info.sim_name, "version": info.sim_version,
                          "protocol": info.protocol, "deterministic": bool(info.deterministic),
                          "settings": dict(info.sim_settings or {})},
                "recorder": f"carla-zmq-bridge {package_version()}",
                "bridge_protocol": protocol.version_string(),
                "infos": self.record_infos, **self.extra}

    def add(self, episode: Any, env: gym.Env) -> None:
        """Appends one finished episode (a ``minari.data_collector.EpisodeBuffer``) of ``env``.

        Raises:
            ValueError: ``env`` has no spec (the first episode's env's spec describes the dataset).
        """
        import minari

        if self.dataset is None:
            if env.spec is None:
                raise ValueError("the recording env needs a spec: make it with gymnasium.make, or "
                                 "give EpisodeRecorder the env's arguments")
            with warnings.catch_warnings():
                # no permalink, e-mail or evaluation env to name: Minari warns about each
                warnings.filterwarnings("ignore", message=r"`(code_permalink|author_email|eval_env)`",
                                        category=UserWarning)
                self.dataset = minari.create_dataset_from_buffers(
                    self.dataset_id, [episode], env=env, algorithm_name=self.algorithm_name,
                    author=getpass.getuser(), description=self.description,
                    data_format=DATA_FORMAT, jpeg_encoding=False,
                    requirements=[f"carla-zmq-bridge=={package_version()}"])
            self.dataset.storage.update_metadata({METADATA_KEY: self.metadata(env)})
        else:
            self.dataset.update_dataset_from_buffer([episode])
        self.episodes += 1
        self.steps += len(episode.rewards)

    def close(self) -> Any:
        """The dataset (None if no episode was written). Idempotent."""
        if self.dataset is None:
            log.warning("no complete episode was recorded: dataset %s not created", self.dataset_id)
        return self.dataset


class EpisodeRecorder(gym.Wrapper):
    """Records every episode of the wrapped env into a DatasetWriter (several envs may share one).

    An episode is written when it terminates or truncates; one cut short by ``close`` or by a
    reset before its end is written as truncated (Minari's DataCollector does the same).

    Args:
        env: a CarlaBridgeEnv or a wrapper of one.
        writer: where episodes go; ``writer.record_infos`` decides whether infos are kept.
        spec_kwargs: the env's constructor arguments (endpoint included), for envs built without
            ``gymnasium.make`` (so without a spec): the dataset's env spec is made from them.
    """

    def __init__(self, env: gym.Env, writer: DatasetWriter,
                 spec_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(env)
        if env.spec is None and spec_kwargs is not None:
            kwargs = dict(spec_kwargs)
            env.unwrapped.spec = env_spec(kwargs.pop("endpoint"), kwargs)
        self.writer = writer
        self._episode: dict[str, Any] | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
        self._flush(cut_short=True)
        obs, info = self.env.reset(seed=seed, options=options)
        base = self.env.unwrapped
        self._episode = {"seed": int(base.sim_seed), "options": options, "observations": [obs],
                         "actions": [], "rewards": [], "terminations": [], "truncations": [],
                         "infos": [self._info(info)]}
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        # cast first: the dataset must hold exactly the action the env was given
        action = np.asarray(action, dtype=self.action_space.dtype).reshape(self.action_space.shape)
        obs, reward, terminated, truncated, info = self.env.step(action)
        episode = self._episode
        if episode is not None:
            episode["observations"].append(obs)
            episode["actions"].append(action)
            episode["rewards"].append(float(reward))
            episode["terminations"].append(bool(terminated))
            episode["truncations"].append(bool(truncated))
            episode["infos"].append(self._info(info))
            if terminated or truncated or info.get("bridge_reconnected"):
                self._flush(cut_short=False)
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        try:
            self._flush(cut_short=True)
        finally:
            super().close()

    def _info(self, info: dict[str, Any]) -> dict[str, Any] | None:
        if not self.writer.record_infos:
            return None
        return info_record(info, self.env.unwrapped.measurements or {})

    def _flush(self, cut_short: bool) -> None:
        from minari.data_collector import EpisodeBuffer

        episode, self._episode = self._episode, None
        if episode is None or not episode["rewards"]:
            return
        if cut_short and not episode["terminations"][-1]:
            episode["truncations"][-1] = True
        infos = _stack(episode["infos"]) if episode["infos"][0] is not None else None
        self.writer.add(EpisodeBuffer(
            seed=episode["seed"], options=episode["options"],
            observations=_stack(episode["observations"]), actions=_stack(episode["actions"]),
            rewards=episode["rewards"], terminations=episode["terminations"],
            truncations=episode["truncations"], infos=infos), self.env)
