"""Child processes in their own sessions, logged to files, stopped in steps; free ports; readiness probes.

The one way to start and watch a child in this repository: the launcher, ``agent.bench`` and the tests
all use ManagedProcess, child_env and the probes below.
"""
from __future__ import annotations

import ctypes
import datetime
import errno
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence

from launch.interpreters import REPO_ROOT

log = logging.getLogger("launch")

POSIX = os.name == "posix"
#: ``send(KILL)`` ends a process for good: SIGKILL on POSIX, TerminateProcess on Windows (which has
#: no SIGKILL; there every other stop request is a CTRL_BREAK_EVENT the child can handle).
KILL = getattr(signal, "SIGKILL", -9)
#: Windows' Ctrl-Break for a process group (a child Python sees it as SIGBREAK).
CTRL_BREAK_EVENT = getattr(signal, "CTRL_BREAK_EVENT", 1)
#: how long each readiness probe waits before checking again whether its process still lives.
PROBE_SECONDS = 0.25


class LaunchError(RuntimeError):
    """The launch cannot go on; the message says what failed and what to do about it."""


def describe_exit(returncode: int | None) -> str:
    """``0``, ``1``, ``-9 (SIGKILL)``... (Popen reports death by signal N as -N)."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"{returncode} ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"{returncode} (signal {-returncode})"
    if returncode > 128 and returncode - 128 in signal.Signals._value2member_map_:
        return f"{returncode} (128 + {signal.Signals(returncode - 128).name})"
    return str(returncode)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every Python child: the repository importable, unbuffered output for the logs.

    PYTHONPATH is replaced, not extended: ours may point at another Python version's packages.
    """
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env["PYTHONPATH"] = REPO_ROOT
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def shell_status(returncode: int) -> int:
    """An exit status for the launcher itself: death by signal N becomes 128 + N, as shells report it."""
    return 128 - returncode if returncode < 0 else returncode


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once here: the forked child should run as little Python as possible before exec.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Linux: the kernel sends SIGTERM to this child if the launcher dies, even by SIGKILL."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedProcess:
    """One child (a CARLA server, a carla_client, the trainer, TensorBoard) in its own session.

    Its output (stdout and stderr) is appended to ``log_path``; each start writes a header line. A new
    session means a terminal's Ctrl-C reaches only the launcher, which then stops the children in
    order, and that the child's whole process group (SubprocVecEnv workers, TensorBoard's data server)
    can be signalled at once. As a context manager it stops the process on exit.
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None,
                 on_start: Callable[["ManagedProcess"], None] | None = None) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.on_start = on_start
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.started_at: float | None = None  # wall-clock time of the latest start
        #: where this start's output begins in the log (the log is appended to across restarts).
        self.log_offset = 0
        self._stop_requested = False
        self._exit_reported = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> int:
        """Starts (or restarts) the process; returns its pid."""
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")  # caller's bug
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logfile:
            stamp = datetime.datetime.now().isoformat(timespec="seconds")
            logfile.write(f"=== {stamp} launch: start #{self.starts + 1}: {' '.join(self.argv)}\n".encode())
            logfile.flush()
            self.log_offset = logfile.tell()
            kwargs: dict = {}
            if POSIX:
                kwargs["start_new_session"] = True
                if _PRCTL is not None:
                    kwargs["preexec_fn"] = _die_with_parent
            else:  # Windows: a new process group receives CTRL_BREAK_EVENT instead of signals
                kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=logfile,
                                         stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, **kwargs)
        self.starts += 1
        self.started_at = time.time()
        self._stop_requested = self._exit_reported = False
        log.info("%s: started pid %d (log %s)", self.name, self.proc.pid, self.log_path)
        if self.on_start:
            self.on_start(self)
        return self.proc.pid

    def send(self, sig: int, group: bool = False) -> None:
        """Sends ``sig`` to the process (or its whole group); a process already gone is not an error."""
        if self.proc is None:
            return
        try:
            if not POSIX:
                # Windows: TerminateProcess only for KILL. A carla_client must restore the CARLA
                # world before it exits, so SIGTERM and SIGINT both become Ctrl-Break, which the
                # child handles (SIGBREAK) like SIGTERM; stop() waits before it resorts to KILL.
                if sig == KILL:
                    self.proc.terminate()
                elif self.proc.poll() is None:
                    self.proc.send_signal(CTRL_BREAK_EVENT)
            elif group:
                os.killpg(self.proc.pid, sig)
            elif self.proc.poll() is None:
                self.proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float, should_hurry: Callable[[], bool] = lambda: False) -> int | None:
        """Waits up to ``timeout`` seconds for the exit; returns early (None) if ``should_hurry()``."""
        if self.proc is None:
            return None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or should_hurry():
                return self.proc.poll()
            try:
                return self.proc.wait(min(remaining, PROBE_SECONDS))
            except subprocess.TimeoutExpired:
                continue

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        """Sends ``sig`` to a running process (once per start) without waiting; stop() then waits."""
        if self.alive() and not self._stop_requested:
            log.info("%s: stopping pid %d with %s", self.name, self.pid, signal.Signals(sig).name)
            self._stop_requested = True
            self.send(sig)

    def report_exit(self) -> int | None:
        """Logs the exit code with its signal name, once per start; returns it (None while running)."""
        code = self.returncode
        if code is not None and not self._exit_reported:
            self._exit_reported = True
            log.info("%s: pid %d exited with %s", self.name, self.pid, describe_exit(code))
        return code

    def stop(self, first: int = signal.SIGTERM, timeout: float = 10.0,
             should_hurry: Callable[[], bool] = lambda: False) -> int | None:
        """Stops the process: ``first`` to the leader, wait; SIGTERM to the group, wait; SIGKILL the group.

        Then SIGKILL the group once more: grandchildren may outlive the leader. Idempotent. Logs the
        exit code with its signal name. Returns the exit code (None if it never started).
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.request_stop(first)
            if self.wait(timeout, should_hurry) is None:
                if first != signal.SIGTERM:
                    log.warning("%s: still running %.0f s after %s; sending SIGTERM", self.name,
                                timeout, signal.Signals(first).name)
                    self.send(signal.SIGTERM, group=True)
                    self.wait(min(timeout, 5.0), should_hurry)
                if self.proc.poll() is None:
                    log.warning("%s: still running; killing it (SIGKILL)", self.name)
                    self.send(KILL, group=True)
                    self.proc.wait(10)  # the kernel delivers SIGKILL; nothing can block it
        self.report_exit()
        if POSIX:
            self.send(KILL, group=True)  # stragglers in its process group
        return self.proc.returncode

    def read_log(self, this_start_only: bool = False) -> str:
        """The log's text (of the current start only, if asked); "" if it cannot be read."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset if this_start_only else 0)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def __enter__(self) -> "ManagedProcess":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"ManagedProcess({self.name!r}, pid={self.pid}, returncode={self.returncode}, "
                f"log={str(self.log_path)!r})")


# -------------------------------------------------------------------------------- ports

def port_is_free(host: str, port: int) -> bool:
    """True if a listening socket could bind ``host:port`` now (with SO_REUSEADDR, as ZeroMQ binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if POSIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES, getattr(errno, "WSAEADDRINUSE", -1)):
                return False
            raise
    return True


def busy_ports(host: str, ports: Sequence[int]) -> list[int]:
    """The ports among ``ports`` that are taken on ``host``."""
    return [port for port in ports if not port_is_free(host, port)]


def first_free_port(host: str, preferred: int, tries: int = 50, skip: Sequence[int] = ()) -> int:
    """``preferred`` if free, else the next free port above it (ports in ``skip`` are passed over).

    Raises:
        LaunchError: none of ``tries`` ports is free.
    """
    for port in range(preferred, min(preferred + tries, 65536)):
        if port not in skip and port_is_free(host, port):
            return port
    raise LaunchError(f"no free port on {host} in {preferred}-{preferred + tries - 1}")


def any_free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (it may be taken by someone else before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """``tcp://host:port`` on a port that was free a moment ago (bind it right away)."""
    return f"tcp://{host}:{any_free_port(host)}"


# -------------------------------------------------------------------------------- readiness

class NotReady(LaunchError):
    """A process did not become ready: it exited, or its deadline passed."""


def _pause_or_raise(process: ManagedProcess | None, seconds: float, what: str) -> None:
    """Waits on the process itself between probes, which also notices at once when it dies."""
    if process is None or process.proc is None:
        time.sleep(seconds)  # nothing to wait on (an external server): a plain probe interval
        return
    try:
        code = process.proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return
    raise NotReady(f"{process.name} exited with {describe_exit(code)} before {what}; last lines of "
                   f"{process.log_path}:\n{process.log_tail()}")


def wait_tcp(host: str, port: int, deadline: float, process: ManagedProcess | None = None,
             should_abort: Callable[[], bool] = lambda: False) -> None:
    """Returns once ``host:port`` accepts a TCP connection.

    Raises:
        NotReady: the process exited, the deadline passed or ``should_abort()`` became true.
    """
    what = f"{host}:{port} accepted connections"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NotReady(f"nothing accepted TCP connections on {host}:{port} in time")
        try:
            with socket.create_connection((host, port), timeout=min(2.0, remaining)):
                return
        except OSError:
            pass
        if should_abort():
            raise NotReady(f"stopped while waiting for {host}:{port}")
        _pause_or_raise(process, min(PROBE_SECONDS, max(0.0, deadline - time.monotonic())), what)


def wait_http(url: str, deadline: float, process: ManagedProcess | None = None,
              should_abort: Callable[[], bool] = lambda: False) -> None:
    """Returns once GET ``url`` answers 200.

    Raises:
        NotReady: the process exited, the deadline passed or ``should_abort()`` became true.
    """
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NotReady(f"no HTTP answer from {url} in time")
        try:
            with urllib.request.urlopen(url, timeout=min(2.0, remaining)) as reply:
                if reply.status == 200:
                    return
        except (OSError, urllib.error.URLError, http.client.HTTPException):
            # HTTPException: something that is not (yet) an HTTP server answers on the port, e.g.
            # another program's socket that grabbed it first; the process check below tells.
            pass
        if should_abort():
            raise NotReady(f"stopped while waiting for {url}")
        _pause_or_raise(process, min(PROBE_SECONDS, max(0.0, deadline - time.monotonic())),
                        f"{url} answered")


def wait_log_line(process: ManagedProcess, prefix: str, deadline: float) -> str:
    """Returns the first line of this start's log that begins with ``prefix`` (e.g. ``ready``).

    Raises:
        NotReady: the process exited first (the message ends with its log), or the deadline passed.
    """
    def found() -> str | None:
        lines = process.read_log(this_start_only=True).splitlines()
        return next((line.strip() for line in lines if line.startswith(prefix)), None)

    what = f"printing a line starting with {prefix!r}"
    while True:
        line = found()
        if line is not None:
            return line
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NotReady(f"{process.name} did not finish {what} in time; last lines of "
                           f"{process.log_path}:\n{process.log_tail()}")
        try:
            _pause_or_raise(process, min(PROBE_SECONDS / 5, remaining), what)
        except NotReady:
            line = found()  # it may have printed the line just before it exited
            if line is None:
                raise
            return line


def wait_bridge(endpoint: str, deadline: float, process: ManagedProcess | None = None,
                should_abort: Callable[[], bool] = lambda: False, curve: str | None = None
                ) -> tuple[dict, float]:
    """Pings a carla_client through the bridge handshake until it answers (no session is opened).

    Each ping waits on the socket for up to a second; between pings the process is checked.
    ``curve``: the key directory of a carla_client started with ``--curve`` (its client keys are used).

    Returns:
        (the ping reply, its round-trip time in seconds).

    Raises:
        NotReady: the process exited, the deadline passed or ``should_abort()`` became true.
    """
    from bridge.client import BridgeClient  # the trainer side's bridge; imported when needed
    from bridge.errors import BridgeError

    last_error: Exception | None = None
    with BridgeClient(endpoint, heartbeat_seconds=0, curve=curve) as client:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NotReady(f"no answer to a bridge ping from {endpoint} in time"
                               + (f" (last error: {last_error})" if last_error else ""))
            started = time.monotonic()
            try:
                reply = client.ping(timeout=min(1.0, remaining))
                return reply, time.monotonic() - started
            except BridgeError as e:  # a timeout, or the connection dropped while it started
                last_error = e
            if should_abort():
                raise NotReady(f"stopped while waiting for {endpoint}")
            # The ping already waited; this only notices a dead process (or paces a refused connect).
            _pause_or_raise(process, 0.0 if time.monotonic() - started > 0.5 else PROBE_SECONDS,
                            f"{endpoint} answered a bridge ping")
