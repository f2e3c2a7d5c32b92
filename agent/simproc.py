"""Starts and stops a ``python -m carla_client`` sim process (benchmark, tests, experiments).

A thin use of the launcher's machinery: launch.interpreters finds the sim's interpreter,
launch.procs.ManagedProcess runs it in its own session and wait_bridge waits for its handshake.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from launch.interpreters import REPO_ROOT, find_sim_python
from launch.procs import ManagedProcess, NotReady, child_env, free_tcp_endpoint, wait_bridge

__all__ = ["SimProcess", "default_sim_python", "free_tcp_endpoint"]


def default_sim_python() -> str:
    """The sim side's interpreter (launch.interpreters' order), else this one (the sim code runs here too)."""
    return find_sim_python()[0] or sys.executable


class SimProcess:
    """A sim-side server in its own session (process group), stopped on exit.

    Args:
        endpoint: address to bind (default: a free loopback port).
        world: ``builtin`` or ``carla``.
        sensors: path of a sensors JSON file, or None for the default sensors.
        seed: the world's seed.
        python: the sim's interpreter (default: default_sim_python()).
        log_path: where its stdout/stderr go (default: a temporary file).
        extra_args: more command-line arguments.
    """

    def __init__(self, endpoint: str | None = None, world: str = "builtin",
                 sensors: str | None = None, seed: int = 0, python: str | None = None,
                 log_path: str | Path | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.endpoint = endpoint or free_tcp_endpoint()
        self.python = python or default_sim_python()
        self.command = [self.python, "-m", "carla_client", "--world", world, "--bind", self.endpoint,
                        "--seed", str(seed), *extra_args]
        if sensors is not None:
            self.command += ["--sensors", str(sensors)]
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="carla_client-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.child = ManagedProcess("carla_client", self.command, self.log_path, env=child_env(),
                                    cwd=REPO_ROOT)

    def start(self, ready_timeout: float = 30.0) -> "SimProcess":
        """Starts the process and waits until it answers a ping.

        Raises:
            NotReady (a RuntimeError): the process exited, or did not answer within ``ready_timeout``.
        """
        self.child.start()
        try:
            wait_bridge(self.endpoint, time.monotonic() + ready_timeout, self.child)
        except NotReady as e:
            self.stop()
            if f"last lines of {self.log_path}" in str(e):  # it died: the message has its log
                raise
            raise NotReady(f"{e}; last lines of {self.log_path}:\n{self.log_tail()}") from None
        return self

    def log_tail(self, lines: int = 20) -> str:
        return self.child.log_tail(lines)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the process group. Returns the exit code. Idempotent."""
        return self.child.stop(timeout=timeout)

    def __enter__(self) -> "SimProcess":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
