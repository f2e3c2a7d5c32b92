"""Trains PPO on CarlaBridgeEnv: ``python -m agent.train [--config YAML] [key=value ...]``.

A run lives in ``runs/<run_name>/``: ``config.yaml`` (the resolved config), TensorBoard event files,
``checkpoints/ppo_<steps>_steps.zip`` and, when training completes, ``model.zip``. ``--resume
CHECKPOINT`` continues that run's step count and TensorBoard curves. Ctrl-C or SIGTERM saves a
checkpoint before exiting (exit code 130).
"""
from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import get_device

from agent.callbacks import (BridgeStatsCallback, DrivingMetricsCallback, ProgressLogCallback,
                             StatusFileCallback, TimeLimitCallback)
from agent.config import check_config, load_config, save_config
from agent.policy import DrivingExtractor
from agent.status import status_path
from agent.vec import make_vec_env

log = logging.getLogger("agent.train")

CHECKPOINT_PREFIX = "ppo"


def checkpoint_path(run_dir: Path, steps: int) -> Path:
    """Same naming as SB3's CheckpointCallback, so the latest checkpoint sorts by step count."""
    return run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}_{steps}_steps.zip"


def latest_checkpoint(run_dir: Path) -> Path | None:
    def steps(p: Path) -> int:
        m = re.search(r"_(\d+)_steps\.zip$", p.name)
        return int(m.group(1)) if m else -1

    found = sorted((run_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}_*_steps.zip"), key=steps)
    return found[-1] if found else None


def run_dir_of_checkpoint(path: Path) -> Path:
    """runs/<run>/checkpoints/x.zip -> runs/<run> (or the zip's own folder for a bare model)."""
    parent = path.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def env_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(config.get("env") or {})
    kwargs["reward"] = dict(config.get("reward") or {})
    if kwargs.get("camera_size") is not None:
        kwargs["camera_size"] = tuple(kwargs["camera_size"])
    return kwargs


def torch_device(config: dict[str, Any]) -> torch.device:
    """The config's ``device`` resolved as SB3 does: ``auto`` is CUDA when torch sees a GPU, else CPU.

    Raises:
        ValueError: a device name torch does not know.
    """
    try:
        return get_device(str(config.get("device") or "auto"))
    except RuntimeError as e:
        raise ValueError(f"device={config.get('device')!r}: {e}") from e


def build_model(config: dict[str, Any], venv: Any) -> PPO:
    policy = dict(config.get("policy") or {})
    policy_kwargs = {
        "features_extractor_class": DrivingExtractor,
        "features_extractor_kwargs": {"cnn_dim": int(policy.get("cnn_dim", 128)),
                                      "state_dim": int(policy.get("state_dim", 64))},
        "net_arch": list(policy.get("net_arch", [64, 64])),
        "log_std_init": float(policy.get("log_std_init", 0.0)),
    }
    return PPO("MultiInputPolicy", venv, policy_kwargs=policy_kwargs, seed=config.get("seed"),
               device=torch_device(config), verbose=0, **(config.get("ppo") or {}))


class Interrupt:
    """SIGINT/SIGTERM handler: during ``learn()`` it only records the signal, elsewhere it raises.

    Inside ``learn()`` a KeyboardInterrupt raised at an arbitrary point can leave SubprocVecEnv with
    one worker's reply read and another's not, and its ``close()`` then waits forever for a reply
    that never comes. So there the signal is noted and StopOnSignalCallback ends ``learn()`` at the
    next env step (after a running PPO update); a second signal raises at once.
    """

    def __init__(self) -> None:
        self.graceful = False
        self.signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.graceful and self.signum is None:
            self.signum = signum
            return
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    def name(self) -> str:
        return f"signal {signal.Signals(self.signum).name}" if self.signum else ""


class StopOnSignalCallback(BaseCallback):
    """Ends ``learn()`` cleanly once an Interrupt has recorded a signal."""

    def __init__(self, interrupt: Interrupt) -> None:
        super().__init__()
        self.interrupt = interrupt

    def _on_step(self) -> bool:
        return self.interrupt.signum is None


def recording_writer(config: dict[str, Any], run_dir: Path, resume: bool) -> Any:
    """The DatasetWriter of the config's ``record:`` section (None when it is null or empty).

    ``record: {dataset_id: carla/builtin/NAME-v0, infos: false}`` records every training episode
    into that Minari dataset; a resumed run appends to it.

    Raises:
        FileExistsError: the dataset exists and this is not a resume.
    """
    settings = config.get("record") or {}
    if not settings.get("dataset_id"):
        return None
    from agent.dataset import DatasetWriter

    return DatasetWriter(str(settings["dataset_id"]), "PPO (recorded while training)",
                         bool(settings.get("infos", False)),
                         extra={"run_dir": str(run_dir), "seed": config.get("seed")}, append=resume)


def train(config: dict[str, Any], run_dir: Path, resume: Path | None = None) -> int:
    """Runs (or continues) training; returns the process exit code."""
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch_device(config)
    config = {**config, "resolved_device": str(device)}  # what `device: auto` became on this machine
    save_config(config, run_dir / "config.yaml")
    log.info("device %s (config: device=%s)", device, config.get("device", "auto"))
    torch.set_num_threads(int(config.get("torch_threads", 1)))
    status = StatusFileCallback(status_path(run_dir), int(config["total_timesteps"]), str(device))
    status.write("starting")
    n_envs = len(config["endpoints"])
    recorder = recording_writer(config, run_dir, resume is not None)
    kwargs = env_kwargs(config)
    if config.get("view"):
        kwargs["render_mode"] = "rgb_array"  # the live view draws env 0's camera frames
    venv = make_vec_env(config["endpoints"], seed=config.get("seed"), vec=config.get("vec", "auto"),
                        record=recorder, **kwargs)
    interrupt = Interrupt()
    handled = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGBREAK] if hasattr(signal, "SIGBREAK")
                                                 else [])  # Windows: the launcher sends Ctrl-Break
    previous = {sig: signal.signal(sig, interrupt) for sig in handled}
    model = None
    try:
        if resume is not None:
            model = PPO.load(resume, env=venv, device=device)
            log.info("resumed %s at step %d", resume, model.num_timesteps)
        else:
            model = build_model(config, venv)
        model.set_logger(configure(str(run_dir), ["tensorboard"]))
        remaining = int(config["total_timesteps"]) - model.num_timesteps
        if remaining <= 0:
            log.info("already trained %d >= total_timesteps steps", model.num_timesteps)
        else:
            every = max(int(config.get("checkpoint_every", 10000)) // n_envs, 1)
            callbacks = [
                CheckpointCallback(every, str(run_dir / "checkpoints"), CHECKPOINT_PREFIX),
                DrivingMetricsCallback(), BridgeStatsCallback(),
                ProgressLogCallback(log, int(config["total_timesteps"])), status,
                StopOnSignalCallback(interrupt)]
            if config.get("time_limit_minutes"):
                callbacks.append(TimeLimitCallback(float(config["time_limit_minutes"]), log))
            if config.get("view"):
                from agent.view import WINDOW_TITLE, LiveView, LiveViewCallback

                tick = float(venv.get_attr("tick_seconds", indices=[0])[0])
                callbacks.append(LiveViewCallback(LiveView(f"{WINDOW_TITLE}: {run_dir.name}", tick)))
            callbacks = CallbackList(callbacks)
            started, steps_before = time.monotonic(), model.num_timesteps
            interrupt.graceful = True
            try:
                model.learn(remaining, callback=callbacks, reset_num_timesteps=resume is None,
                            progress_bar=bool(config.get("progress_bar", True)))
            finally:
                interrupt.graceful = False
            if interrupt.signum is not None:
                raise KeyboardInterrupt(interrupt.name())
            log.info("trained %d steps in %.0f s", model.num_timesteps - steps_before,
                     time.monotonic() - started)
        model.save(run_dir / "model.zip")
        log.info("saved %s", run_dir / "model.zip")
        status.write("finished")
        return 0
    except KeyboardInterrupt as e:
        if model is not None:
            path = checkpoint_path(run_dir, model.num_timesteps)
            model.save(path)
            log.warning("interrupted (%s): saved %s; continue with --resume %s", e or "Ctrl-C",
                        path, path)
        status.write("interrupted")
        return 130
    except Exception as e:
        status.write("failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            venv.close()
        except (EOFError, BrokenPipeError, ConnectionError) as e:
            log.debug("closing the envs: %s", e)
        if model is not None and model.logger is not None:
            model.logger.close()
        if recorder is not None and recorder.close() is not None:
            log.info("recorded %d episodes, %d steps into the Minari dataset %s", recorder.episodes,
                     recorder.steps, recorder.dataset_id)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="config file (default: agent/configs/ppo.yaml; with --resume: the run's)")
    parser.add_argument("--resume", metavar="CHECKPOINT", type=Path, default=None,
                        help="continue from this checkpoint zip, in its run directory")
    parser.add_argument("--run-name", metavar="NAME", default=None,
                        help="runs/<NAME> (default: run_name from the config, else ppo-<time>)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. ppo.learning_rate=1e-4 total_timesteps=5000 "
                             "endpoints=tcp://127.0.0.1:5556,tcp://127.0.0.1:5557")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        prepared = prepare(args)
    except (ValueError, OSError) as e:  # a configuration mistake: one line, nothing written
        print(f"python -m agent.train: error: {e}", file=sys.stderr)
        return 2
    try:
        return train(*prepared)
    except FileExistsError as e:  # e.g. record: names a dataset that exists already
        log.error("%s", e)
        return 2


def prepare(args: argparse.Namespace) -> tuple[dict[str, Any], Path, Path | None]:
    """The checked config, run directory and checkpoint to resume.

    Raises:
        ValueError: unknown or ill-typed keys, bad YAML, a bad endpoint, a missing ``--resume``.
        OSError: an unreadable file.
    """
    resume = args.resume
    if resume is not None:
        if resume.is_dir():  # a run directory: take its latest checkpoint
            resume = latest_checkpoint(resume) or resume / "model.zip"
        if not resume.is_file():
            raise ValueError(f"--resume {args.resume}: no such checkpoint or run directory")
        run_dir = run_dir_of_checkpoint(resume)
        config_path = args.config or (run_dir / "config.yaml" if (run_dir / "config.yaml").is_file()
                                      else None)
        config = load_config(config_path, args.overrides)
    else:
        config = load_config(args.config, args.overrides)
        name = args.run_name or config.get("run_name") or time.strftime("ppo-%Y%m%d-%H%M%S")
        config["run_name"] = name
        run_dir = Path(config.get("runs_dir", "runs")) / name
    if isinstance(config.get("endpoints"), str):
        config["endpoints"] = [e.strip() for e in config["endpoints"].split(",") if e.strip()]
    check_config(config)
    log.info("run directory %s", run_dir)
    return config, run_dir, resume


if __name__ == "__main__":
    sys.exit(main())
