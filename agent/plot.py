"""Plots a run's learning curves from its TensorBoard logs: ``python -m agent.plot runs/x``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_TAGS = ("episode/return", "episode/route_completion", "episode/lap_completed",
                "episode/mean_speed")


def read_scalars(run_dir: str | Path, tags: tuple[str, ...]
                 ) -> tuple[dict[str, list[tuple[int, float, float]]], float]:
    """(tag -> [(step, wall_time, value)], wall time the logging started) for ``run_dir``.

    Reads every event file in the directory, so a resumed run's curves continue.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep all points
    accumulator.Reload()
    available = set(accumulator.Tags().get("scalars", []))
    data = {tag: sorted((e.step, e.wall_time, e.value) for e in accumulator.Scalars(tag))
            for tag in tags if tag in available}
    try:
        start = accumulator.FirstEventTimestamp()  # written when the trainer opened the log
    except ValueError:
        start = min((points[0][1] for points in data.values()), default=0.0)
    return data, start


def plot(run_dir: str | Path, out: str | Path, tags: tuple[str, ...] = DEFAULT_TAGS,
         title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, start = read_scalars(run_dir, tags)
    if not data:
        raise ValueError(f"{run_dir}: none of the tags {list(tags)} has been logged")
    fig, axes = plt.subplots(len(data), 1, figsize=(7, 2.3 * len(data)), sharex=True, squeeze=False)
    for ax, (tag, points) in zip(axes[:, 0], data.items()):
        steps = [p[0] for p in points]
        ax.plot(steps, [p[2] for p in points], marker=".", linewidth=1)
        ax.set_ylabel(tag.split("/")[-1].replace("_", " "))
        ax.grid(alpha=0.3)
        if tag == "episode/lap_completed":
            ax.set_ylim(-0.05, 1.05)
    last = axes[-1, 0]
    last.set_xlabel("environment steps")
    # a second axis with wall-clock minutes since training started, from the first tag's points
    first = [(0, start, 0.0)] + next(iter(data.values()))
    minutes = [(p[1] - start) / 60.0 for p in first]
    top = axes[0, 0].secondary_xaxis(
        "top", functions=(lambda s: _interp(s, [p[0] for p in first], minutes),
                          lambda m: _interp(m, minutes, [p[0] for p in first])))
    top.set_xlabel("wall-clock minutes")
    fig.suptitle(title or Path(run_dir).name)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _interp(x, xp, fp):
    import numpy as np

    return np.interp(x, xp, fp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.plot", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="runs/<run>")
    parser.add_argument("--out", default=None, help="PNG path (default: <run_dir>/learning_curve.png)")
    parser.add_argument("--tags", default=",".join(DEFAULT_TAGS), help="comma-separated scalar tags")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    out = plot(args.run_dir, args.out or Path(args.run_dir) / "learning_curve.png",
               tuple(t for t in args.tags.split(",") if t), args.title)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
