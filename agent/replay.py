"""Re-drives a recorded Minari dataset and compares it byte for byte: ``python -m agent.replay
--dataset-id ID [--episode K] [--endpoint E]``.

Each episode is reset with its recorded seed and stepped with its recorded actions through a sim with
the recorded world: without ``--endpoint`` a built-in world is started (``python -m carla_client``
under the sim interpreter) with the recorded settings (world seed, tick, NPCs, sensors). Every
observation, reward, termination and truncation, and with recorded infos every measurement, frame,
sim time, reward term and event count, is compared byte for byte.

On a deterministic world (the built-in one) the first difference is a failure: it prints
``diverged: episode E, step S, field F, max difference D`` and exits 1; no difference prints
``identical`` and exits 0. On a world that promises no determinism (CARLA) it replays everything and
prints divergence statistics per field instead, exiting 0. Step 0 is the reset; step s follows the
s-th action. Exit 2: the dataset or the sim cannot be used (unknown id, another world, a CARLA
recording without ``--endpoint``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from agent.dataset import METADATA_KEY, info_record
from agent.env import CarlaBridgeEnv

log = logging.getLogger("agent.replay")


class Divergence(NamedTuple):
    episode: int
    step: int
    field: str
    max_difference: float

    def __str__(self) -> str:
        return (f"episode {self.episode}, step {self.step}, field {self.field}, max difference "
                f"{self.max_difference:.6g}")


class FieldStats:
    """How often one field differed, and by how much (for worlds without determinism)."""

    def __init__(self) -> None:
        self.compared = self.differing = 0
        self.max_difference = 0.0
        self.sum_difference = 0.0

    def add(self, difference: float | None) -> None:
        self.compared += 1
        if difference is not None:
            self.differing += 1
            self.max_difference = max(self.max_difference, difference)
            self.sum_difference += difference


class ReplayReport(NamedTuple):
    episodes: int
    steps: int
    fields: list[str]
    divergence: Divergence | None        # the first one (the only one on a deterministic world)
    stats: dict[str, FieldStats]         # every field's statistics

    @property
    def identical(self) -> bool:
        return self.divergence is None


class DatasetError(Exception):
    """The dataset cannot be replayed as asked (exit code 2)."""


def difference(recorded: Any, replayed: Any) -> float | None:
    """None when both are the same bytes (dtype and shape included), else the largest absolute
    difference: infinity for another shape or a NaN on one side, 0 for equal values in other bytes
    (another dtype, or -0.0 against 0.0)."""
    a, b = np.asarray(recorded), np.asarray(replayed)
    if a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes():
        return None
    if a.shape != b.shape:
        return float("inf")
    x, y = np.atleast_1d(a.astype(np.float64)), np.atleast_1d(b.astype(np.float64))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(x - y)
    diff[np.isnan(x) & np.isnan(y)] = 0.0
    diff[np.isnan(diff)] = np.inf
    return float(diff.max()) if diff.size else 0.0


def flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    """(path, leaf) pairs of nested dicts: ``infos/measurements/speed``..."""
    if isinstance(value, dict):
        for key in sorted(value):
            yield from flatten(f"{prefix}/{key}", value[key])
    else:
        yield prefix, value


def _at(tree: Any, index: int) -> Any:
    if isinstance(tree, dict):
        return {k: _at(v, index) for k, v in tree.items()}
    return tree[index]


class Replayer:
    """Compares one recorded episode after another against a live env.

    Args:
        env: a CarlaBridgeEnv with the recorded settings.
        strict: stop at the first difference (a deterministic world).
    """

    def __init__(self, env: CarlaBridgeEnv, strict: bool) -> None:
        self.env = env
        self.strict = strict
        self.stats: dict[str, FieldStats] = {}
        self.divergence: Divergence | None = None
        self.steps = 0

    def _check(self, episode: int, step: int, recorded: dict[str, Any], replayed: dict[str, Any]
               ) -> bool:
        """Compares every field of one step; False when a strict replay must stop."""
        for (field, want), (_, got) in zip(flatten("", recorded), flatten("", replayed)):
            field = field.lstrip("/")
            diff = difference(want, got)
            self.stats.setdefault(field, FieldStats()).add(diff)
            if diff is not None and self.divergence is None:
                self.divergence = Divergence(episode, step, field, diff)
        return not (self.strict and self.divergence is not None)

    def episode(self, index: int, data: Any, seed: int | None, options: dict | None) -> bool:
        """Replays one episode; False when a strict replay diverged."""
        infos = data.infos if data.infos else None
        obs, info = self.env.reset(seed=seed, options=options)
        recorded = {"observations": _at(data.observations, 0)}
        replayed = {"observations": obs}
        if infos is not None:
            recorded["infos"] = _at(infos, 0)
            replayed["infos"] = info_record(info, self.env.measurements or {})
        if not self._check(index, 0, recorded, replayed):
            return False
        for t, action in enumerate(data.actions):
            obs, reward, terminated, truncated, info = self.env.step(action)
            self.steps += 1
            recorded = {"observations": _at(data.observations, t + 1),
                        "rewards": np.float64(data.rewards[t]),
                        "terminations": np.bool_(data.terminations[t]),
                        "truncations": np.bool_(data.truncations[t])}
            replayed = {"observations": obs, "rewards": np.float64(reward),
                        "terminations": np.bool_(terminated), "truncations": np.bool_(truncated)}
            if infos is not None:
                recorded["infos"] = _at(infos, t + 1)
                replayed["infos"] = info_record(info, self.env.measurements or {})
            if not self._check(index, t + 1, recorded, replayed):
                return False
            if terminated or truncated:
                break  # the recorded episode may go on (a divergence is already counted) or not
        return True


def replay(dataset: Any, env: CarlaBridgeEnv, episodes: list[int], strict: bool) -> ReplayReport:
    """Replays ``episodes`` of ``dataset`` in ``env``; stops at the first difference if ``strict``."""
    replayer = Replayer(env, strict)
    done = 0
    metadata = list(dataset.storage.get_episode_metadata(episodes))
    for index, data, meta in zip(episodes, dataset.iterate_episodes(episodes), metadata):
        options = meta.get("options") or None
        done += 1
        if not replayer.episode(index, data, meta.get("seed"), options):
            break
        log.info("episode %d replayed", index)
    return ReplayReport(done, replayer.steps, sorted(replayer.stats), replayer.divergence,
                        replayer.stats)


def _sim_for(world: dict[str, Any], stack: ExitStack) -> str:
    """Starts the recorded built-in world under the sim interpreter; returns its endpoint."""
    from agent.simproc import SimProcess

    settings = world.get("settings") or {}
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agent-replay-")))
    args = ["--tick", str(settings.get("tick_seconds", 0.05)),
            "--npc", str(settings.get("npc_vehicles", 0))]
    sensors = None
    if settings.get("sensors") is not None:
        sensors = tmp / "sensors.json"
        sensors.write_text(json.dumps(settings["sensors"]))
    sim = SimProcess(world="builtin", sensors=None if sensors is None else str(sensors),
                     seed=int(settings.get("seed", 0)), log_path=tmp / "sim.log",
                     extra_args=tuple(args))
    stack.enter_context(sim)
    return sim.endpoint


def open_env(dataset: Any, endpoint: str | None, stack: ExitStack) -> tuple[CarlaBridgeEnv, bool]:
    """The env to replay in and whether the replay is strict.

    Raises:
        DatasetError: not recorded by agent.record, no way to get its world, or another world.
    """
    meta = dataset.storage.metadata.get(METADATA_KEY)
    if not meta or dataset.env_spec is None:
        raise DatasetError(f"{dataset.id} was not recorded by agent.record (no {METADATA_KEY} "
                           "metadata or env spec): nothing to replay it against")
    world = meta["world"]
    if endpoint is None:
        if world["name"] != "builtin":
            raise DatasetError(f"{dataset.id} was recorded on the {world['name']} world: start that "
                               "sim and pass its address with --endpoint")
        endpoint = _sim_for(world, stack)
    kwargs = {k: v for k, v in dataset.env_spec.kwargs.items() if k != "endpoint"}
    kwargs["reconnect"] = False
    env = stack.enter_context(CarlaBridgeEnv(endpoint, **kwargs))
    info = env.server_info
    if info.sim_name != world["name"]:
        raise DatasetError(f"{dataset.id} was recorded on the {world['name']} world, but {endpoint} "
                           f"serves the {info.sim_name} world")
    recorded, served = world.get("settings") or {}, info.sim_settings or {}
    different = sorted(k for k in set(recorded) | set(served) if recorded.get(k) != served.get(k))
    if recorded and served and different:
        raise DatasetError(f"the world at {endpoint} is not the recorded one: {', '.join(different)} "
                           f"differ (recorded {({k: recorded.get(k) for k in different})})")
    return env, bool(world.get("deterministic")) and bool(info.deterministic)


def format_stats(report: ReplayReport) -> str:
    lines = ["| field | steps compared | steps differing | max difference | mean difference |",
             "|---|---|---|---|---|"]
    for field in report.fields:
        s = report.stats[field]
        mean = s.sum_difference / s.differing if s.differing else 0.0
        lines.append(f"| {field} | {s.compared} | {s.differing} | {s.max_difference:.6g} | "
                     f"{mean:.6g} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.replay", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-id", metavar="ID", required=True, help="the Minari dataset")
    parser.add_argument("--episode", metavar="K", type=int, default=None,
                        help="replay only episode K (default: all)")
    parser.add_argument("--endpoint", default=None,
                        help="a running sim with the recorded world (default: start the recorded "
                             "built-in world)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    import minari

    try:
        dataset = minari.load_dataset(args.dataset_id)
    except (FileNotFoundError, ValueError) as e:
        print(f"cannot load {args.dataset_id}: {e}", file=sys.stderr)
        return 2
    episodes = list(range(dataset.total_episodes))
    if args.episode is not None:
        if args.episode not in episodes:
            print(f"{args.dataset_id} has episodes 0..{len(episodes) - 1}; no episode {args.episode}",
                  file=sys.stderr)
            return 2
        episodes = [args.episode]
    with ExitStack() as stack:
        try:
            env, strict = open_env(dataset, args.endpoint, stack)
        except DatasetError as e:
            print(str(e), file=sys.stderr)
            return 2
        report = replay(dataset, env, episodes, strict)
    if strict:
        if report.identical:
            print(f"identical: {report.episodes} episodes, {report.steps} steps; fields compared "
                  f"byte for byte: {', '.join(report.fields)}")
            return 0
        print(f"diverged: {report.divergence}")
        return 1
    print(f"replayed {report.episodes} episodes, {report.steps} steps on a world without "
          f"determinism ({'no difference' if report.identical else 'first difference: ' + str(report.divergence)}):")
    print(format_stats(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
