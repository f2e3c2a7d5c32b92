"""Evaluates a policy: ``python -m agent.evaluate --model runs/x/model.zip [--video out.mp4]``.

Prints a table of per-episode metrics (return, route completion, lap completed, collisions, lane
invasions, mean speed, steps) and optionally writes an MP4 of the camera with an overlay of speed,
steer, throttle/brake and reward (``--show``: the same in a live window). ``--random`` evaluates a
uniformly random policy instead. ``--world-seed 100,101 --npc 6`` starts a built-in sim per circuit
(or, with ``--endpoint``, reports the given sim as that circuit) and prints one table each.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from agent.cli import add_env_args, add_policy_args, env_settings, resolve_config
from agent.env import CarlaBridgeEnv
from agent.view import WINDOW_TITLE, LiveView, annotate, overlay_lines

log = logging.getLogger("agent.evaluate")

COLUMNS = ("episode", "return", "route_completion", "lap_completed", "collisions",
           "lane_invasions", "mean_speed", "steps")


class VideoRecorder:
    """Writes camera frames, upscaled to ``size`` pixels high, with a text overlay (cv2, mp4v)."""

    def __init__(self, path: str | Path, fps: float, size: int = 384) -> None:
        self.path, self.fps, self.size = str(path), fps, size
        self._writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, rgb: np.ndarray, lines: list[str]) -> None:
        frame = annotate(rgb, lines, self.size)
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(self.path, fourcc, self.fps, (frame.shape[1], frame.shape[0]))
            if not self._writer.isOpened():
                raise OSError(f"OpenCV cannot write {self.path} with the mp4v codec")
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def run_episodes(env: CarlaBridgeEnv, act: Callable[[dict[str, np.ndarray]], np.ndarray],
                 episodes: int, seed: int, video: VideoRecorder | None = None,
                 view: LiveView | None = None) -> list[dict[str, Any]]:
    """Plays ``episodes`` episodes (seeded ``seed``, ``seed + 1``...) and returns their metrics.

    Frames go to ``video`` (every one) and ``view`` (when due: at most one per sim tick).
    """
    rows = []
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        ret, step, done = 0.0, 0, False
        _draw(env, video, view, episode, 0, info, 0.0, 0.0)
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            ret += reward
            step += 1
            done = terminated or truncated
            _draw(env, video, view, episode, step, info, reward, ret)
        m = info["episode_metrics"]
        rows.append({"episode": episode, "return": m["return"],
                     "route_completion": m["route_completion"],
                     "lap_completed": bool(m["lap_completed"]), "collisions": int(m["collisions"]),
                     "lane_invasions": int(m["lane_invasions"]), "mean_speed": m["mean_speed"],
                     "steps": int(m["length"])})
        log.info("episode %d: %s", episode, rows[-1])
    return rows


def _draw(env: CarlaBridgeEnv, video: VideoRecorder | None, view: LiveView | None, episode: int,
          step: int, info: dict[str, Any], reward: float, ret: float) -> None:
    wanted_by_view = view is not None and view.due()
    if video is None and not wanted_by_view:
        return
    frame = env.render()
    if frame is None:
        return
    lines = overlay_lines(episode, step, info, reward, ret)
    if video is not None:
        video.write(frame, lines)
    if wanted_by_view:
        view.show(frame, lines)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"episodes": len(rows),
            "laps_completed": sum(r["lap_completed"] for r in rows),
            **{f"mean_{k}": float(np.mean([r[k] for r in rows]))
               for k in ("return", "route_completion", "collisions", "lane_invasions",
                         "mean_speed", "steps")}}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| episode | return | route completion | lap completed | collisions | lane invasions "
            "| mean speed (m/s) | steps |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['episode']} | {r['return']:.1f} | {100 * r['route_completion']:.1f}% | "
                     f"{'yes' if r['lap_completed'] else 'no'} | {r['collisions']} | "
                     f"{r['lane_invasions']} | {r['mean_speed']:.2f} | {r['steps']} |")
    s = summary(rows)
    lines.append(f"| **all** | {s['mean_return']:.1f} | {100 * s['mean_route_completion']:.1f}% | "
                 f"**{s['laps_completed']}/{s['episodes']}** | {s['mean_collisions']:.1f} | "
                 f"{s['mean_lane_invasions']:.1f} | {s['mean_mean_speed']:.2f} | "
                 f"{s['mean_steps']:.0f} |")
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(markdown_table(rows))
        return
    table = Table(title=title)
    for name in ("episode", "return", "route completion", "lap", "collisions", "lane invasions",
                 "mean speed m/s", "steps"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(str(r["episode"]), f"{r['return']:.1f}", f"{100 * r['route_completion']:.1f}%",
                      "yes" if r["lap_completed"] else "no", str(r["collisions"]),
                      str(r["lane_invasions"]), f"{r['mean_speed']:.2f}", str(r["steps"]))
    s = summary(rows)
    table.add_row("all", f"{s['mean_return']:.1f}", f"{100 * s['mean_route_completion']:.1f}%",
                  f"{s['laps_completed']}/{s['episodes']}", f"{s['mean_collisions']:.1f}",
                  f"{s['mean_lane_invasions']:.1f}", f"{s['mean_mean_speed']:.2f}",
                  f"{s['mean_steps']:.0f}", style="bold")
    Console().print(table)


def _seeds(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.evaluate",
                                     description=__doc__.split("\n")[0])
    add_policy_args(parser)
    add_env_args(parser)
    parser.add_argument("--episodes", metavar="N", type=int, default=10, help="(default: 10)")
    parser.add_argument("--seed", type=int, default=1000,
                        help="episode i is reset with seed + i (default: 1000)")
    parser.add_argument("--video", metavar="MP4", default=None, help="write a video of the episodes")
    parser.add_argument("--video-height", type=int, default=384, help="(default: 384)")
    parser.add_argument("--show", action="store_true",
                        help="watch the episodes in a window (the camera with the video's overlay)")
    parser.add_argument("--world-seed", metavar="SEED", type=_seeds, default=None,
                        help="the sim's world seed (the circuit), reported with the results; "
                             "without --endpoint a built-in sim is started for it. A,B,C: one sim "
                             "and one table per seed")
    parser.add_argument("--npc", metavar="N", type=int, default=None,
                        help="the sim's NPC vehicles, reported; the NPCs of the sims --world-seed "
                             "starts (default: 0 there)")
    parser.add_argument("--markdown", metavar="FILE", default=None, help="also write the table here")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write rows and summary")
    return parser.parse_args(argv)


def world_label(world: dict[str, Any]) -> str:
    seed = world.get("world_seed")
    npc = world.get("npc_vehicles")
    return (f"world seed {seed if seed is not None else '?'}, "
            f"{npc if npc is not None else '?'} NPC vehicles")


def evaluation_targets(args: argparse.Namespace, config: dict[str, Any], stack: contextlib.ExitStack
                       ) -> list[tuple[str, dict[str, Any]]]:
    """(endpoint, world description) pairs to evaluate on.

    With ``--world-seed`` and no ``--endpoint``, a built-in sim is started for each seed (with
    ``--npc`` NPC vehicles) and stopped at the end; otherwise the given sim is used and the seed and
    NPC count given are reported as its description.
    """
    seeds = args.world_seed or [None]
    if args.world_seed and args.endpoint is None:
        from agent.simproc import SimProcess

        targets = []
        for seed in seeds:
            sim = stack.enter_context(SimProcess(seed=seed, extra_args=("--npc", str(args.npc or 0))))
            targets.append((sim.endpoint, {"world_seed": seed, "npc_vehicles": args.npc or 0,
                                           "endpoint": "started by agent.evaluate"}))
        return targets
    endpoint = args.endpoint or config["endpoints"][0]
    if len(seeds) > 1:
        raise SystemExit("several --world-seed values need no --endpoint (one sim each is started)")
    return [(endpoint, {"world_seed": seeds[0], "npc_vehicles": args.npc, "endpoint": endpoint})]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("agent.view").setLevel(logging.INFO)
    args = parse_args(argv)
    config = resolve_config(args)
    kwargs = env_settings(config)  # no reconnects: an evaluation fails loudly, it skips no episode
    model = None
    if not args.random:
        import torch
        from stable_baselines3 import PPO

        from agent.train import torch_device

        torch.set_num_threads(int(config.get("torch_threads", 1)))
        model = PPO.load(args.model, device=torch_device(config))
    who = "random policy" if args.random else str(args.model)
    results = []
    with contextlib.ExitStack() as stack:
        view = stack.enter_context(LiveView(f"{WINDOW_TITLE}: {who}")) if args.show else None
        for endpoint, world in evaluation_targets(args, config, stack):
            render = "rgb_array" if (args.video or args.show) else None
            with CarlaBridgeEnv(endpoint, render_mode=render, **kwargs) as env:
                if view is not None:
                    view.min_interval = env.tick_seconds  # at most one redraw per sim tick
                if model is None:
                    env.action_space.seed(args.seed)
                    act = lambda obs: env.action_space.sample()  # noqa: E731
                else:
                    act = lambda obs: model.predict(obs, deterministic=not args.stochastic)[0]  # noqa: E731
                video = None
                if args.video:
                    path = Path(args.video)
                    if len(args.world_seed or []) > 1:
                        path = path.with_name(f"{path.stem}-world{world['world_seed']}{path.suffix}")
                    video = VideoRecorder(path, 1.0 / env.tick_seconds, args.video_height)
                try:
                    rows = run_episodes(env, act, args.episodes, args.seed, video, view)
                finally:
                    if video is not None:
                        video.close()
                        print(f"video: {video.path} ({video.frames} frames)")
            results.append((world, rows))
            print_table(rows, f"{who}, {args.episodes} episodes, {world_label(world)}")
    if len(results) > 1:
        print("\n".join(f"{world_label(w)}: {summary(r)['laps_completed']}/{len(r)} laps, "
                        f"{summary(r)['mean_collisions']:.2f} collisions per episode"
                        for w, r in results))
    if args.markdown:
        Path(args.markdown).write_text("\n\n".join(
            f"{world_label(w)}\n\n{markdown_table(r)}" for w, r in results) + "\n")
    if args.json:
        worlds = [{**w, "rows": r, "summary": summary(r)} for w, r in results]
        Path(args.json).write_text(json.dumps(worlds[0] if len(worlds) == 1 else {"worlds": worlds},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
