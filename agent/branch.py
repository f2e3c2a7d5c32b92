"""Group rollouts from one saved world state: K rollouts of M steps, each starting from the same
snapshot (``python -m agent.branch``; ``branch()`` in code).

This is the seed system's snapshot/restore used for GRPO-style group rollouts: every rollout of a
group sees exactly the same world at its start (ego, NPCs, clock, random generators), so the
differences between their returns come from the policy alone. Rollouts stop early when their
episode terminates or truncates. The env is stepped through ``env.unwrapped``: wrappers that count
steps or episodes (TimeLimit, Monitor) would be confused by going back in time.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from agent.env import CarlaBridgeEnv, EnvSnapshot

log = logging.getLogger("agent.branch")

#: ``policy(obs) -> action``, an SB3 model (``predict``), or one action array (M, dim) per rollout.
Policy = Any


class Rollout(NamedTuple):
    """One branch: the actions taken, the rewards received, and how it ended."""

    actions: np.ndarray            # (steps, action dim), as sent to env.step
    rewards: np.ndarray            # (steps,)
    terminated: bool
    truncated: bool
    observations: list[dict[str, np.ndarray]] | None  # steps + 1 (the start first) if kept

    @property
    def return_(self) -> float:
        return float(np.sum(self.rewards))

    @property
    def steps(self) -> int:
        return len(self.rewards)


class BranchResult(NamedTuple):
    """The snapshot every rollout started from and the rollouts, in order."""

    snapshot: EnvSnapshot
    rollouts: list[Rollout]

    @property
    def returns(self) -> np.ndarray:
        return np.array([r.return_ for r in self.rollouts])


def _actor(policy: Policy, rollout: int, deterministic: bool
           ) -> Callable[[dict[str, np.ndarray], int], np.ndarray]:
    if isinstance(policy, (list, tuple)) or (isinstance(policy, np.ndarray) and policy.ndim == 3):
        actions = policy[rollout]
        return lambda obs, t: np.asarray(actions[t])
    if hasattr(policy, "predict"):
        return lambda obs, t: policy.predict(obs, deterministic=deterministic)[0]
    if callable(policy):
        return lambda obs, t: policy(obs)
    raise TypeError(f"policy must be callable, have predict(), or be a list of action arrays; got "
                    f"{type(policy)}")


def _seed_rollout(env: CarlaBridgeEnv, seed: int) -> None:
    """Makes a random or sampling policy's choices in one rollout reproducible."""
    env.action_space.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def branch(env: Any, policy: Policy, rollouts: int, steps: int, snapshot: EnvSnapshot | None = None,
           seed: int | None = None, deterministic: bool = False, keep_observations: bool = False,
           restore_after: bool = True) -> BranchResult:
    """Runs ``rollouts`` rollouts of up to ``steps`` steps, each from the same snapshot.

    Args:
        env: a CarlaBridgeEnv (or a wrapper of one) in a running episode, on a world that can
            snapshot (the built-in world; CARLA 0.9 cannot).
        policy: ``policy(obs) -> action``, an SB3 model (its ``predict``), or a list of one action
            array of shape (steps, action dim) per rollout.
        rollouts: K, the group size.
        steps: M, the most steps per rollout.
        snapshot: where to branch from (default: a snapshot taken now).
        seed: rollout k seeds the action space and torch with ``seed + k`` (reproducible random or
            sampling policies); None leaves the generators alone.
        deterministic: passed to an SB3 model's ``predict``.
        keep_observations: keep every observation (memory: steps x rollouts x one observation).
        restore_after: leave the env at the snapshot again when done (else at the last rollout's end).

    Raises:
        SnapshotUnsupportedError: the world cannot snapshot. ValueError: bad counts or actions.
    """
    if rollouts < 1 or steps < 1:
        raise ValueError(f"need at least one rollout and one step, got {rollouts} x {steps}")
    base: CarlaBridgeEnv = env.unwrapped
    if snapshot is None:
        snapshot = base.snapshot()
    results = []
    for k in range(rollouts):
        obs, _ = base.restore(snapshot)
        if seed is not None:
            _seed_rollout(base, seed + k)
        act = _actor(policy, k, deterministic)
        actions, rewards, kept = [], [], [obs] if keep_observations else None
        terminated = truncated = False
        for t in range(steps):
            action = np.asarray(act(obs, t), dtype=np.float32)
            obs, reward, terminated, truncated, _ = base.step(action)
            actions.append(action)
            rewards.append(float(reward))
            if kept is not None:
                kept.append(obs)
            if terminated or truncated:
                break
        results.append(Rollout(np.array(actions), np.array(rewards), bool(terminated),
                               bool(truncated), kept))
        log.info("rollout %d: %d steps, return %.3f", k, len(rewards), results[-1].return_)
    if restore_after:
        base.restore(snapshot)
    return BranchResult(snapshot, results)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from agent.cli import add_env_args, add_policy_args

    parser = argparse.ArgumentParser(prog="python -m agent.branch", description=__doc__.split("\n")[0])
    add_policy_args(parser)
    parser.add_argument("--rollouts", "-k", metavar="K", type=int, default=8,
                        help="rollouts from the snapshot (default: 8)")
    parser.add_argument("--steps", "-m", metavar="M", type=int, default=100,
                        help="steps per rollout (default: 100)")
    parser.add_argument("--warmup", metavar="N", type=int, default=0,
                        help="steps to drive with the policy before taking the snapshot (default: 0)")
    parser.add_argument("--seed", type=int, default=0,
                        help="episode seed; rollout k seeds its sampling with seed + k (default: 0)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the returns and rollout lengths here")
    add_env_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from agent.cli import env_settings, make_actor, resolve_config

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    config = resolve_config(args)
    endpoint = args.endpoint or config["endpoints"][0]
    with CarlaBridgeEnv(endpoint, **env_settings(config)) as env:
        act, name = make_actor(args, env, config, args.seed)
        obs, _ = env.reset(seed=args.seed)
        for _ in range(args.warmup):
            obs, _, terminated, truncated, _ = env.step(act(obs))
            if terminated or truncated:
                print(f"the episode ended during the {args.warmup}-step warmup", file=sys.stderr)
                return 1
        result = branch(env, act, args.rollouts, args.steps, seed=args.seed)
    returns = result.returns
    for k, rollout in enumerate(result.rollouts):
        end = "terminated" if rollout.terminated else "truncated" if rollout.truncated else ""
        print(f"rollout {k}: return {rollout.return_:9.3f} over {rollout.steps} steps {end}")
    print(f"{name} from frame {result.snapshot.frame}: mean return "
          f"{returns.mean():.3f}, std {returns.std():.3f}, min {returns.min():.3f}, "
          f"max {returns.max():.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "policy": name, "returns": returns.tolist(),
            "steps": [r.steps for r in result.rollouts]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
