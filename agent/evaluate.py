"""Evaluates a policy: ``python -m agent.evaluate --model runs/x/model.zip [--video out.mp4]``.

Prints a table of per-episode metrics (return, route completion, lap completed, collisions, lane
invasions, mean speed, steps) and optionally writes an MP4 of the camera with an overlay of speed,
steer, throttle/brake and reward. ``--random`` evaluates a uniformly random policy instead.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from agent.config import load_config
from agent.env import CarlaBridgeEnv
from agent.train import env_kwargs, run_dir_of_checkpoint

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
        h, w = rgb.shape[:2]
        scale = self.size / h
        frame = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (round(w * scale), self.size),
                           interpolation=cv2.INTER_NEAREST if scale >= 2 else cv2.INTER_LINEAR)
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(self.path, fourcc, self.fps, (frame.shape[1], frame.shape[0]))
            if not self._writer.isOpened():
                raise OSError(f"OpenCV cannot write {self.path} with the mp4v codec")
        panel = frame.copy()
        cv2.rectangle(panel, (0, 0), (frame.shape[1], 14 + 18 * len(lines)), (0, 0, 0), -1)
        frame = cv2.addWeighted(panel, 0.55, frame, 0.45, 0)  # translucent band behind the text
        for i, text in enumerate(lines):
            cv2.putText(frame, text, (6, 18 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (255, 255, 255), 1, cv2.LINE_AA)
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def overlay_lines(episode: int, step: int, info: dict[str, Any], reward: float, ret: float
                  ) -> list[str]:
    return [
        f"ep {episode}  step {step}  lap {100 * info.get('route_completion', 0.0):5.1f}%",
        f"speed {info.get('speed', 0.0):5.2f} m/s  offset {info.get('lateral_offset', 0.0):+5.2f} m",
        f"steer {info.get('steer', 0.0):+5.2f}  throttle {info.get('throttle', 0.0):4.2f}  "
        f"brake {info.get('brake', 0.0):4.2f}",
        f"reward {reward:+6.3f}  return {ret:8.2f}",
    ]


def run_episodes(env: CarlaBridgeEnv, act: Callable[[dict[str, np.ndarray]], np.ndarray],
                 episodes: int, seed: int, video: VideoRecorder | None = None
                 ) -> list[dict[str, Any]]:
    """Plays ``episodes`` episodes (seeded ``seed``, ``seed + 1``...) and returns their metrics."""
    rows = []
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        ret, step, done = 0.0, 0, False
        if video is not None and (frame := env.render()) is not None:
            video.write(frame, overlay_lines(episode, 0, info, 0.0, 0.0))
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            ret += reward
            step += 1
            done = terminated or truncated
            if video is not None and (frame := env.render()) is not None:
                video.write(frame, overlay_lines(episode, step, info, reward, ret))
        m = info["episode_metrics"]
        rows.append({"episode": episode, "return": m["return"],
                     "route_completion": m["route_completion"],
                     "lap_completed": bool(m["lap_completed"]), "collisions": int(m["collisions"]),
                     "lane_invasions": int(m["lane_invasions"]), "mean_speed": m["mean_speed"],
                     "steps": int(m["length"])})
        log.info("episode %d: %s", episode, rows[-1])
    return rows


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.evaluate",
                                     description=__doc__.split("\n")[0])
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", metavar="ZIP", type=Path, help="a model or checkpoint zip")
    who.add_argument("--random", action="store_true", help="a uniformly random policy")
    parser.add_argument("--episodes", metavar="N", type=int, default=10, help="(default: 10)")
    parser.add_argument("--endpoint", default=None,
                        help="sim address (default: the first endpoint of the run's config)")
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="env settings (default: the run's config.yaml, else the default one)")
    parser.add_argument("--seed", type=int, default=1000,
                        help="episode i is reset with seed + i (default: 1000)")
    parser.add_argument("--stochastic", action="store_true",
                        help="sample actions instead of taking the policy's mean")
    parser.add_argument("--video", metavar="MP4", default=None, help="write a video of the episodes")
    parser.add_argument("--video-height", type=int, default=384, help="(default: 384)")
    parser.add_argument("--markdown", metavar="FILE", default=None, help="also write the table here")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write rows and summary")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. env.max_episode_steps=4000")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    config_path = args.config
    if config_path is None and args.model is not None:
        candidate = run_dir_of_checkpoint(args.model) / "config.yaml"
        config_path = candidate if candidate.is_file() else None
    config = load_config(config_path, args.overrides)
    endpoint = args.endpoint or config["endpoints"][0]
    kwargs = env_kwargs(config)
    kwargs["reconnect"] = False  # an evaluation should fail loudly, not skip an episode
    with CarlaBridgeEnv(endpoint, render_mode="rgb_array" if args.video else None, **kwargs) as env:
        if args.random:
            env.action_space.seed(args.seed)
            act = lambda obs: env.action_space.sample()  # noqa: E731
            title = f"random policy, {args.episodes} episodes"
        else:
            import torch
            from stable_baselines3 import PPO

            torch.set_num_threads(int(config.get("torch_threads", 1)))
            from agent.train import torch_device

            model = PPO.load(args.model, device=torch_device(config))
            act = lambda obs: model.predict(obs, deterministic=not args.stochastic)[0]  # noqa: E731
            title = f"{args.model}, {args.episodes} episodes"
        video = (VideoRecorder(args.video, 1.0 / env.tick_seconds, args.video_height)
                 if args.video else None)
        try:
            rows = run_episodes(env, act, args.episodes, args.seed, video)
        finally:
            if video is not None:
                video.close()
    print_table(rows, title)
    if args.video:
        print(f"video: {args.video} ({video.frames} frames)")
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(rows) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary(rows)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
