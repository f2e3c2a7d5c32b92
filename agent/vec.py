"""Vectorised envs: one CarlaBridgeEnv per sim endpoint, built by thunks inside the worker processes."""
from __future__ import annotations

import multiprocessing
import signal
from typing import Any, Callable, Sequence

import gymnasium as gym
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from agent.env import CarlaBridgeEnv


def make_env(endpoint: str, seed: int | None = None, monitor: bool = True,
             record: Any = None, **env_kwargs: Any) -> Callable[[], gym.Env]:
    """A thunk (CleanRL's ``make_env``): the env, and so its sockets, are created where it is called.

    Args:
        endpoint: the sim's address (or ``inprocess://builtin``).
        seed: seeds the env's action space (the vec env seeds its first reset).
        monitor: wrap in SB3's Monitor so episode returns/lengths reach ``info["episode"]``.
        record: an agent.dataset.DatasetWriter: record every episode into its Minari dataset
            (the env must then live in this process: it shares the writer).
        env_kwargs: passed to CarlaBridgeEnv.
    """

    def thunk() -> gym.Env:
        if multiprocessing.parent_process() is not None:
            # In a SubprocVecEnv worker: leave Ctrl-C and SIGTERM (often sent to the whole process
            # group) to the trainer, which saves a checkpoint and then closes us; a worker dying
            # first would break the trainer's step mid-rollout. Workers are daemons: they cannot
            # outlive the trainer.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        env: gym.Env = CarlaBridgeEnv(endpoint, **env_kwargs)
        if record is not None:
            from agent.dataset import EpisodeRecorder

            env = EpisodeRecorder(env, record, {"endpoint": endpoint, **env_kwargs})
        if seed is not None:
            env.action_space.seed(seed)
        if monitor:
            env = Monitor(env)
        return env

    return thunk


def make_vec_env(endpoints: Sequence[str] | str, seed: int | None = 0, vec: str = "auto",
                 monitor: bool = True, record: Any = None, **env_kwargs: Any) -> VecEnv:
    """One env per endpoint, stepped in parallel.

    Args:
        endpoints: sim addresses, one env each (a comma-separated string is accepted too).
        seed: base seed; env i gets ``seed + i``.
        vec: ``"subproc"`` (one worker process per env), ``"dummy"`` (all in this process, in turn)
            or ``"auto"``: dummy for a single endpoint, where a worker process only adds a hop, or
            when recording.
        monitor: wrap each env in SB3's Monitor.
        record: an agent.dataset.DatasetWriter that every env records its episodes into; needs the
            envs in this process (``vec`` "dummy" or "auto").
        env_kwargs: passed to every CarlaBridgeEnv.

    Raises:
        ValueError: no endpoints, an unknown ``vec``, or ``record`` with ``vec="subproc"``.
    """
    if isinstance(endpoints, str):
        endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
    if not endpoints:
        raise ValueError("make_vec_env needs at least one endpoint")
    if vec not in ("auto", "subproc", "dummy"):
        raise ValueError(f"vec must be 'auto', 'subproc' or 'dummy', got {vec!r}")
    if record is not None and vec == "subproc":
        raise ValueError("recording needs the envs in the trainer's process (they share one dataset "
                         "writer): use vec=dummy or vec=auto")
    thunks = [make_env(e, None if seed is None else seed + i, monitor, record, **env_kwargs)
              for i, e in enumerate(endpoints)]
    if vec == "dummy" or (vec == "auto" and (len(thunks) == 1 or record is not None)):
        venv: VecEnv = DummyVecEnv(thunks)
    else:
        # forkserver: workers start clean (no copy of the trainer's torch threads or sockets)
        venv = SubprocVecEnv(thunks, start_method="forkserver")
    if seed is not None:
        venv.seed(seed)  # env i's first reset gets seed + i; later resets draw from its generator
    return venv
