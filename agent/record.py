"""Records episodes through the bridge into a Minari dataset: ``python -m agent.record (--model ZIP |
--random) --episodes N --dataset-id carla/builtin/NAME-v0 [--endpoint E] [--config YAML] [--infos]``.

Episode ``i`` is reset with seed ``--seed + i``. The dataset goes where Minari keeps datasets
($MINARI_DATASETS_PATH, else ~/.minari/datasets) and loads with ``minari.load_dataset(ID)``; its
metadata names the env spec, the algorithm, the sim's world, version and settings, and every
episode's seed, which is what ``python -m agent.replay`` needs to re-drive it exactly.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from agent.cli import add_env_args, add_policy_args, env_settings, make_actor, resolve_config
from agent.dataset import DatasetWriter, EpisodeRecorder, dataset_exists
from agent.env import CarlaBridgeEnv

log = logging.getLogger("agent.record")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.record", description=__doc__.split("\n")[0])
    add_policy_args(parser)
    parser.add_argument("--episodes", metavar="N", type=int, required=True, help="episodes to record")
    parser.add_argument("--dataset-id", metavar="ID", required=True,
                        help="Minari dataset id, e.g. carla/builtin/ppo-v0")
    parser.add_argument("--infos", action="store_true",
                        help="also record infos: the sim's raw measurements, frame, sim time, reward "
                             "terms and event counts (replay then compares them too)")
    parser.add_argument("--seed", type=int, default=0,
                        help="episode i is reset with seed + i (default: 0)")
    add_env_args(parser)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")
    return args


def record(args: argparse.Namespace) -> DatasetWriter:
    """Records ``args.episodes`` episodes; returns the writer (its ``dataset`` is the result)."""
    config = resolve_config(args)
    endpoint = args.endpoint or config["endpoints"][0]
    kwargs = env_settings(config)
    with CarlaBridgeEnv(endpoint, **kwargs) as base:
        act, algorithm = make_actor(args, base, config, args.seed)
        writer = DatasetWriter(args.dataset_id, algorithm, args.infos,
                               extra={"seed": args.seed, "episodes_requested": args.episodes})
        env = EpisodeRecorder(base, writer, {"endpoint": endpoint, **kwargs})
        try:
            for episode in range(args.episodes):
                obs, _ = env.reset(seed=args.seed + episode)
                steps, done = 0, False
                while not done:
                    obs, _, terminated, truncated, _ = env.step(act(obs))
                    steps += 1
                    done = terminated or truncated
                log.info("episode %d: %d steps", episode, steps)
        finally:
            env.close()  # an episode cut short by an error is kept, marked truncated
    return writer


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if dataset_exists(args.dataset_id):
        print(f"a Minari dataset {args.dataset_id!r} already exists; choose another name or version "
              f"(or delete it: minari delete {args.dataset_id})", file=sys.stderr)
        return 2
    started = time.monotonic()
    writer = record(args)
    dataset = writer.close()
    if dataset is None:
        return 1
    size = dataset.storage.get_size()
    print(f"recorded {writer.episodes} episodes, {writer.steps} steps into {args.dataset_id} "
          f"({size:.1f} MB at {dataset.storage.data_path.parent}) in "
          f"{time.monotonic() - started:.0f} s; load it with "
          f"minari.load_dataset({args.dataset_id!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
