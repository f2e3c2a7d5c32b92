"""The launcher's stop on Windows (mocked platform): Ctrl-Break and a wait, never an immediate
TerminateProcess, so that a carla_client restores the CARLA world before it exits (issue 8)."""
import subprocess

import pytest

from launch import procs


class FakeWindowsProc(object):
    """A Popen on Windows: records send_signal/terminate; exits on Ctrl-Break if it honours it."""

    pid = 4242

    def __init__(self, honours_ctrl_break):
        self.honours = honours_ctrl_break
        self.returncode = None
        self.calls = []

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            raise subprocess.TimeoutExpired("carla_client", timeout)
        return self.returncode

    def send_signal(self, sig):
        self.calls.append(("send_signal", sig))
        if sig == procs.CTRL_BREAK_EVENT and self.honours:
            self.returncode = 0  # restored the world, then exited cleanly

    def terminate(self):
        self.calls.append(("terminate",))
        self.returncode = 1


@pytest.fixture
def windows(monkeypatch):
    monkeypatch.setattr(procs, "POSIX", False)


def managed(tmp_path, proc):
    process = procs.ManagedProcess("carla_client-0", ["python", "-m", "carla_client"],
                                   tmp_path / "carla_client.log")
    process.proc = proc
    return process


def test_a_normal_stop_sends_ctrl_break_and_waits(windows, tmp_path):
    proc = FakeWindowsProc(honours_ctrl_break=True)
    assert managed(tmp_path, proc).stop(timeout=5.0) == 0
    assert proc.calls == [("send_signal", procs.CTRL_BREAK_EVENT)], "never TerminateProcess"


def test_sigint_is_ctrl_break_too(windows, tmp_path):
    proc = FakeWindowsProc(honours_ctrl_break=True)
    managed(tmp_path, proc).request_stop(procs.signal.SIGINT)
    assert proc.calls == [("send_signal", procs.CTRL_BREAK_EVENT)]


def test_terminate_process_only_after_the_wait_runs_out(windows, tmp_path):
    proc = FakeWindowsProc(honours_ctrl_break=False)
    assert managed(tmp_path, proc).stop(timeout=0.3) == 1
    assert proc.calls[0] == ("send_signal", procs.CTRL_BREAK_EVENT)
    assert proc.calls[-1] == ("terminate",)
    assert ("terminate",) not in proc.calls[:-1]
