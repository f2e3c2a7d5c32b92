"""Command-line pieces shared by agent.branch, agent.record and agent.replay: which policy acts, and
which env (config file, overrides, endpoint) it acts in."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agent.config import load_config
from agent.train import env_kwargs, run_dir_of_checkpoint

#: what acts: ``act(obs) -> action``.
Actor = Callable[[dict[str, np.ndarray]], np.ndarray]


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    """``--model ZIP | --random`` (one required) and ``--stochastic``."""
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", metavar="ZIP", type=Path, help="an SB3 PPO model or checkpoint zip")
    who.add_argument("--random", action="store_true", help="a uniformly random policy")
    parser.add_argument("--stochastic", action="store_true",
                        help="sample the model's actions instead of taking its mean")


def add_env_args(parser: argparse.ArgumentParser) -> None:
    """``--endpoint``, ``--config`` and trailing ``key=value`` config overrides."""
    parser.add_argument("--endpoint", default=None,
                        help="sim address (default: the first endpoint of the config)")
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="env settings (default: the model's run config.yaml, else "
                             "agent/configs/ppo.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. env.max_episode_steps=500")


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config named by ``--config``, else the one next to ``--model``'s run, else the default.

    Raises:
        ValueError: a malformed config or override.
    """
    path = args.config
    model = getattr(args, "model", None)
    if path is None and model is not None:
        candidate = run_dir_of_checkpoint(model) / "config.yaml"
        path = candidate if candidate.is_file() else None
    return load_config(path, getattr(args, "overrides", ()))


def env_settings(config: dict[str, Any]) -> dict[str, Any]:
    """CarlaBridgeEnv keyword arguments for a tool that must fail loudly (no reconnects)."""
    kwargs = env_kwargs(config)
    kwargs["reconnect"] = False  # a recording or replay must not silently skip an episode
    return kwargs


def load_model(path: Path, config: dict[str, Any]) -> Any:
    """An SB3 PPO model on the CPU, with the config's torch thread count."""
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(int(config.get("torch_threads", 1)))
    return PPO.load(path, device="cpu")


def make_actor(args: argparse.Namespace, env: Any, config: dict[str, Any], seed: int
               ) -> tuple[Actor, str]:
    """The policy chosen by ``--model``/``--random`` as ``act(obs)``, and its name for metadata."""
    if getattr(args, "random", False):
        env.action_space.seed(seed)
        return (lambda obs: env.action_space.sample()), "random"
    model = load_model(args.model, config)
    deterministic = not getattr(args, "stochastic", False)
    return (lambda obs: model.predict(obs, deterministic=deterministic)[0]), \
        f"PPO ({Path(args.model).name}{'' if deterministic else ', stochastic'})"
