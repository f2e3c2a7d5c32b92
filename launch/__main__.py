"""Command line: ``python -m launch up [options] [key=value ...] [-- trainer key=value ...]`` and ``doctor``."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from launch import commands
from launch.config import load_config

EPILOG = """\
examples:
  python -m launch up                                   # 2 built-in worlds, PPO, TensorBoard on :6006
  python -m launch up clients.count=4 -- total_timesteps=500000 ppo.learning_rate=1e-4
  python -m launch up carla.executable=/opt/carla/CarlaUE4.sh clients.count=1
  python -m launch up --resume runs/20250101-120000         # continue after Ctrl-C
  python -m launch doctor

Launcher overrides (key=value before --) change launch/configs/default.yaml's keys; everything after --
goes to `python -m agent.train` as agent config overrides. Details: docs/launch.md.
"""


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m launch {command}", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="launcher config merged over launch/configs/default.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="launcher config overrides, e.g. clients.count=4 tensorboard.port=6007")
    if command == "up":
        parser.description = ("Start CARLA (if configured), the carla_clients under the sim's Python, "
                              "the trainer and TensorBoard; restart crashed clients; stop everything "
                              "on Ctrl-C or when training ends, with the trainer's exit code.")
        parser.add_argument("--keep-tensorboard", action="store_true",
                            help="when training ends, stop the rest but keep TensorBoard until Ctrl-C")
        parser.add_argument("--keep-tensorboard-seconds", metavar="S", type=float, default=0.0,
                            help="when training ends, keep TensorBoard up for S seconds (default: 0)")
        parser.add_argument("--no-tensorboard", action="store_true", help="do not start TensorBoard")
        parser.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", type=Path, default=None,
                            help="continue a run (runs/<run>, or a checkpoint zip in it) where Ctrl-C "
                                 "or a crash left it; its logs and TensorBoard curves continue")
        parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                            help="(default: %(default)s)")
    else:
        parser.description = ("Check interpreters, packages on each side, ports, the CARLA server and "
                              "a bridge ping; exit 1 if anything fails.")
        parser.add_argument("--no-ping", action="store_true",
                            help="skip the bridge ping through a temporary carla_client")
    return parser


def parse_args(argv: list[str]) -> tuple[str, argparse.Namespace, list[str]]:
    """(command, options, trainer overrides): ``argv`` is cut at the first ``--``; the rest is the trainer's.

    Options and ``key=value`` overrides may be mixed in any order.
    """
    trainer_overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, trainer_overrides = argv[:cut], argv[cut + 1:]
    if not argv or argv[0] not in ("up", "doctor"):
        top = argparse.ArgumentParser(prog="python -m launch", epilog=EPILOG,
                                      formatter_class=argparse.RawDescriptionHelpFormatter,
                                      description="One-click training for carla-zmq-bridge.")
        top.add_argument("command", choices=("up", "doctor"))
        top.parse_args(argv[:1])  # prints usage and exits for -h or a bad command
        raise SystemExit(2)
    return argv[0], _parser(argv[0]).parse_intermixed_args(argv[1:]), trainer_overrides


def _setup_logging(level: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s launch: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("launch")
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler


def main(argv: list[str] | None = None) -> int:
    command, args, trainer_overrides = parse_args(sys.argv[1:] if argv is None else argv)
    overrides = list(args.overrides)
    if command == "up" and args.no_tensorboard:
        overrides.append("tensorboard.enabled=false")
    try:
        config = load_config(args.config, overrides)
    except (OSError, ValueError) as e:
        print(f"launch: bad configuration: {e}", file=sys.stderr)
        return 2
    if command == "doctor":
        from launch.doctor import run_doctor
        if trainer_overrides:
            print("launch doctor: ignoring the arguments after --", file=sys.stderr)
        return run_doctor(config, ping=not args.no_ping)

    if args.resume is not None and not args.resume.exists():  # before anything is created on disk
        print(f"launch: --resume {args.resume}: no such run directory or checkpoint", file=sys.stderr)
        return 2
    from launch.supervisor import Launcher
    handler = _setup_logging(args.log_level)
    # a resumed run trains on with its own saved config; another trainer module has its own keys
    if args.resume is None and config.trainer.module == "agent.train":
        try:
            commands.check_trainer_config(config, [*config.trainer.overrides, *trainer_overrides])
        except ValueError as e:
            print(f"launch: bad trainer configuration: {e}", file=sys.stderr)
            return 2
    launcher = Launcher(config, trainer_overrides, keep_tensorboard=args.keep_tensorboard,
                        keep_tensorboard_seconds=args.keep_tensorboard_seconds, resume=args.resume,
                        log_handler=handler)
    launcher.logs_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(launcher.logs_dir / "launcher.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("launch").addHandler(file_handler)
    try:
        return launcher.run()
    finally:
        file_handler.close()


if __name__ == "__main__":
    sys.exit(main())
