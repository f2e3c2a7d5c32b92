"""Starts and stops a ``python -m carla_client`` sim process (benchmark, tests, experiments)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent


def default_sim_python() -> str:
    """$CZB_SIM_PYTHON, else the sim venv named in .venvs/envs.json (scripts/setup_envs.py), else
    .venvs/sim-3.6, else this interpreter (the sim side's code also runs under 3.11)."""
    configured = os.environ.get("CZB_SIM_PYTHON")
    if configured:
        return configured
    try:
        recorded = json.loads((REPO / ".venvs" / "envs.json").read_text()).get("sim_python")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded and os.access(recorded, os.X_OK):
        return recorded
    venv = REPO / ".venvs" / "sim-3.6" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """A loopback endpoint on a port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


def wait_for_sim(endpoint: str, alive: Callable[[], bool], timeout: float = 30.0) -> None:
    """Waits until the server at ``endpoint`` answers a ping (readiness through the protocol).

    Raises:
        RuntimeError: ``alive()`` turned false (the process died) or ``timeout`` passed.
    """
    from bridge.client import BridgeClient
    from bridge.errors import BridgeError

    deadline = time.monotonic() + timeout
    with BridgeClient(endpoint, timeout=1.0, heartbeat_seconds=0) as client:
        while True:
            if not alive():
                raise RuntimeError(f"the sim for {endpoint} exited before answering")
            try:
                client.ping(timeout=0.5)
                return
            except BridgeError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the sim at {endpoint} did not answer within {timeout} s") \
                        from None


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
        self.process: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 30.0) -> "SimProcess":
        """Starts the process and waits until it answers a ping.

        Raises:
            RuntimeError: the process exited, or did not answer within ``ready_timeout``.
        """
        # PYTHONPATH replaced, not extended: ours may point at another Python version's packages
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        env.pop("PYTHONHOME", None)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, cwd=str(REPO), env=env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        try:
            wait_for_sim(self.endpoint, lambda: self.process is None or self.process.poll() is None,
                         timeout)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; its log ends:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the process group. Returns the exit code. Idempotent."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        return process.returncode

    def __enter__(self) -> "SimProcess":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
