"""Test helpers: where the sim-side interpreter is, free TCP endpoints, and sim subprocesses that always die.

Import it as `from tests.interpreters import free_tcp_endpoint`. It runs under Python 3.6 as well as 3.11
(tests/both/ use it under both): 3.6 syntax only, standard library only, no import of bridge/,
carla_client/ or agent/.
"""
import json
import os
import signal
import socket
import subprocess
import sys
from typing import Dict, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ENVS_JSON = os.path.join(REPO_ROOT, ".venvs", "envs.json")


def is_ci() -> bool:
    """True under CI (CI=true), where a missing sim interpreter is a failure instead of a skip."""
    return os.environ.get("CI", "").lower() == "true"


def envs_json_path() -> str:
    """The envs.json written by scripts/setup_envs.py ($CZB_ENVS_JSON overrides the default)."""
    return os.environ.get("CZB_ENVS_JSON") or DEFAULT_ENVS_JSON


def read_envs() -> Dict[str, str]:
    """The recorded interpreters ({"sim_python": ..., "trainer_python": ..., ...}), or {}."""
    try:
        with open(envs_json_path()) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def find_sim_python() -> Tuple[Optional[str], str]:
    """Finds the sim side's interpreter.

    Order: the sim venv recorded in envs.json (what scripts/setup_envs.py built), then
    $CZB_SIM_PYTHON (an interpreter that already has pyzmq, msgpack and numpy).

    Returns:
        (path or None, a sentence saying where it came from or why none was found).
    """
    envs_path = envs_json_path()
    recorded = read_envs().get("sim_python")
    if recorded and os.access(recorded, os.X_OK):
        return recorded, "sim venv from %s" % envs_path
    from_env = os.environ.get("CZB_SIM_PYTHON")
    if from_env:
        if os.access(from_env, os.X_OK):
            return from_env, "$CZB_SIM_PYTHON"
        return None, "$CZB_SIM_PYTHON=%s is not an executable file" % from_env
    if recorded:
        why = "%s names %s, which does not exist" % (envs_path, recorded)
    else:
        why = "no sim_python in %s and $CZB_SIM_PYTHON is unset" % envs_path
    return None, why + "; run `python3 scripts/setup_envs.py` (needs Python 3.6, e.g. from pyenv)"


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """Returns "tcp://127.0.0.1:<port>" for a port that was free a moment ago.

    The port is released before returning, so another process could take it in between; tests bind
    it right away, and loopback ports are plentiful.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    finally:
        sock.close()
    return "tcp://%s:%d" % (host, port)


def subprocess_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for a child on another interpreter: the repo importable, unbuffered output.

    PYTHONPATH is replaced, not extended: the parent's may point at another Python version's packages.
    """
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env["PYTHONPATH"] = REPO_ROOT
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class SimProcess(object):
    """A child process (e.g. ``python -m carla_client ...``) in its own process group, output to a log file.

    stop() ends the whole group: SIGTERM, a grace period, then SIGKILL. Use it as a context manager or
    through the ``sim_process`` fixture, which stops it on teardown whatever the test did.
    """

    def __init__(self, args: Sequence[str], python: str, log_path: str,
                 env: Optional[Dict[str, str]] = None, cwd: str = REPO_ROOT) -> None:
        self.args = [python] + list(args)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        try:
            # start_new_session: the child and anything it spawns share a process group we can kill
            # as a whole, and a Ctrl-C meant for pytest does not hit it before teardown does.
            self.proc = subprocess.Popen(self.args, cwd=cwd, env=subprocess_env(env),
                                         stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except BaseException:
            self._log.close()
            raise
        self.pid = self.proc.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def read_log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def wait(self, timeout: float) -> int:
        """Waits for the process to exit; raises subprocess.TimeoutExpired if it does not."""
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 5.0) -> Optional[int]:
        """Ends the process group (idempotent). Returns the leader's exit code (negative = signal)."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout)
        # Grandchildren may outlive the leader; the group id stays valid while any of them lives.
        self._signal_group(signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> "SimProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        return "SimProcess(pid=%d, returncode=%r, log=%r)" % (self.pid, self.proc.poll(), self.log_path)


def start_sim_process(args: Sequence[str], log_path: str, python: Optional[str] = None,
                      env: Optional[Dict[str, str]] = None) -> SimProcess:
    """Starts ``<python> <args>`` (e.g. ``["-m", "carla_client", "--port", "5556"]``) from the repo root.

    Args:
        args: arguments after the interpreter.
        log_path: file that receives the child's stdout and stderr.
        python: interpreter; defaults to the sim side's (see find_sim_python).
        env: extra environment variables.

    Raises:
        RuntimeError: no python given and no sim interpreter found.
    """
    if python is None:
        python, why = find_sim_python()
        if python is None:
            raise RuntimeError("no sim-side interpreter: " + why)
    return SimProcess(args, python, log_path, env=env)


def python_version_of(python: str, timeout: float = 30.0) -> str:
    """'X.Y.Z' of an interpreter (runs it once)."""
    out = subprocess.check_output(
        [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"], timeout=timeout)
    return out.decode().strip()


def describe_returncode(returncode: Optional[int]) -> str:
    """'0', '1', '-15 (SIGTERM)', or 'still running' for None."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return "%d (%s)" % (returncode, signal.Signals(-returncode).name)
        except ValueError:
            pass
    return str(returncode)


def current_python_version() -> str:
    return "%d.%d.%d" % sys.version_info[:3]


__all__ = [
    "REPO_ROOT", "SimProcess", "current_python_version", "describe_returncode", "envs_json_path", "find_sim_python",
    "free_tcp_endpoint", "is_ci", "python_version_of", "read_envs", "start_sim_process",
    "subprocess_env",
]
