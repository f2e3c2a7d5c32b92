"""Start a Python module in a child process (any interpreter) and wait for its ``ready`` line."""
import os
import selectors
import signal
import subprocess
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ChildProcess(object):
    """A child that prints ``ready <endpoint> ...`` on stdout once it serves. Kills its group on close."""

    def __init__(self, python, module, args, ready_timeout=30.0, env=None):
        child_env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONUNBUFFERED="1")
        child_env.update(env or {})
        self.process = subprocess.Popen(
            [python, "-m", module] + list(args), cwd=REPO_ROOT, env=child_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.ready_line = self._read_ready(ready_timeout)
        parts = self.ready_line.split()
        self.endpoint = parts[1] if len(parts) > 1 else None

    def _read_ready(self, timeout):
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if selector.select(deadline - time.monotonic()):
                    line = self.process.stdout.readline().decode()
                    if line.startswith("ready"):
                        return line.strip()
                    if not line and self.process.poll() is not None:
                        break
        finally:
            selector.close()
        self.kill()
        raise RuntimeError("child {} never became ready; stderr:\n{}".format(
            self.process.args, self.process.stderr.read().decode(errors="replace")[-3000:]))

    def kill(self, sig=signal.SIGKILL):
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self):
        self.kill()
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()
