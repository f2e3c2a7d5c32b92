"""A Python module in a child process (any interpreter) that is ready once it prints ``ready ...``."""
import tempfile
import time
from pathlib import Path

from launch.interpreters import REPO_ROOT
from launch.procs import ManagedProcess, NotReady, child_env, wait_log_line


class ChildProcess(ManagedProcess):
    """``<python> -m <module> <args>``, started at once; ready when it prints ``ready <endpoint> ...``.

    The test peers and ``carla_client`` print that line once they serve. Output goes to a temporary log
    file; close() stops the process group (ManagedProcess.stop).

    Raises:
        NotReady (a RuntimeError): the child exited first (the message ends with its log) or stayed
            silent for ``ready_timeout`` seconds.
    """

    def __init__(self, python, module, args, ready_timeout=30.0, env=None):
        log_dir = Path(tempfile.mkdtemp(prefix="czb-child-"))
        super().__init__(module, [python, "-m", module, *args], log_dir / f"{module}.log",
                         env=child_env(env), cwd=REPO_ROOT)
        self.start()
        try:
            self.ready_line = wait_log_line(self, "ready", time.monotonic() + ready_timeout)
        except NotReady:
            self.stop(timeout=5.0)
            raise
        parts = self.ready_line.split()
        self.endpoint = parts[1] if len(parts) > 1 else None

    def close(self):
        self.stop(timeout=5.0)
