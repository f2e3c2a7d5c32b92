"""The launcher: restart rate limiter, ports, config and command lines (no processes); supervision with
stand-ins (fast); end to end with the built-in world on the sim venv's Python, agent.train and TensorBoard.

Run: ``cd /work/main && PYTHONPATH=. .venvs/trainer/bin/python -m pytest tests/test_launch.py``.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from launch import commands
from launch.config import REPO_ROOT, apply_overrides, default_run_name, load_config
from launch.procs import (busy_ports, describe_exit, first_free_port, port_is_free, shell_status)
from launch.supervisor import Launcher, RestartLimiter

STANDINS = "tests.test_launch_standins"


# ==================================================================================== unit tests

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restart_limiter_allows_k_restarts_per_window_with_exponential_backoff():
    clock = FakeClock()
    limiter = RestartLimiter(max_in_window=3, window_seconds=60, max_total=100, backoff_initial=0.5,
                             backoff_max=1.5, clock=clock)
    assert limiter.request() == 0.5
    clock.now += 1
    assert limiter.request() == 1.0
    clock.now += 1
    assert limiter.request() == 1.5  # 2.0 capped at backoff_max
    clock.now += 1
    assert limiter.request() is None
    assert "3 restarts in the last 60 s" in limiter.refusal
    assert limiter.total == 3


def test_restart_limiter_window_slides():
    clock = FakeClock()
    limiter = RestartLimiter(2, 10, 100, 1.0, 60, clock=clock)
    assert limiter.request() == 1.0
    clock.now += 6
    assert limiter.request() == 2.0
    clock.now += 1
    assert limiter.request() is None  # two within the last 10 s
    clock.now += 3.5  # the first restart is now 10.5 s old: it left the window
    assert limiter.in_window() == 1
    assert limiter.request() == 2.0  # backoff counts the restarts still in the window
    clock.now += 100
    assert limiter.request() == 1.0  # a quiet period resets the backoff


def test_restart_limiter_total_cap():
    clock = FakeClock()
    limiter = RestartLimiter(5, 1, 3, 0.0, 0.0, clock=clock)
    for _ in range(3):
        assert limiter.request() == 0.0
        clock.now += 2
    assert limiter.request() is None
    assert "restart.max_total" in limiter.refusal


def test_port_selection_skips_ports_in_use():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        assert busy_ports("127.0.0.1", [port]) == [port]
        chosen = first_free_port("127.0.0.1", port)
        assert chosen > port and port_is_free("127.0.0.1", chosen)
        assert first_free_port("127.0.0.1", port, skip=[chosen]) > chosen
    assert port_is_free("127.0.0.1", port)  # released: free again (SO_REUSEADDR, as ZeroMQ binds)


def test_describe_exit_names_signals():
    assert describe_exit(0) == "0"
    assert describe_exit(-9) == "-9 (SIGKILL)"
    assert describe_exit(130) == "130 (128 + SIGINT)"
    assert describe_exit(None) == "still running"
    assert shell_status(-15) == 143 and shell_status(3) == 3


def test_config_overrides_types_and_typos(tmp_path):
    config = load_config(None, ["clients.count=3", "clients.extra_args=--tick,0.1", "world=builtin"])
    assert config.clients.count == 3
    assert config.clients.extra_args == ("--tick", "0.1")
    assert config.clients.endpoints()[2] == "tcp://127.0.0.1:5558"
    with pytest.raises(ValueError, match="unknown key 'clients.cuont'"):
        load_config(None, ["clients.cuont=3"])
    with pytest.raises(ValueError, match="must be int"):
        load_config(None, ["clients.count=two"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({"a": 1}, ["a"])
    user = tmp_path / "mine.yaml"
    user.write_text("tensorboard:\n  port: 7000\ncarla:\n  executable: /opt/carla/CarlaUE4.sh\n")
    config = load_config(user, ["carla.port=3000"])
    assert config.tensorboard.port == 7000 and config.tensorboard.enabled  # merged over defaults
    assert config.world_kind == "carla" and config.carla.rpc_port(1) == 3000 + config.carla.port_stride
    user.write_text("tensorbord: {}\n")
    with pytest.raises(ValueError, match="unknown key 'tensorbord'"):
        load_config(user)


def test_command_lines():
    config = load_config(None, ["clients.count=2", "clients.base_port=6000", "clients.seed=7"])
    argv = commands.client_argv(config, 1, "/sim/python")
    assert argv[:3] == ["/sim/python", "-m", "carla_client"]
    assert argv[argv.index("--bind") + 1] == "tcp://127.0.0.1:6001"
    # built-in world: client 1 serves the 8 circuits after client 0's, with the NPCs
    assert argv[argv.index("--seed") + 1] == "15" and "--host" not in argv
    assert argv[argv.index("--circuits") + 1] == "8" and argv[argv.index("--npc") + 1] == "6"
    assert "view=true" not in commands.trainer_argv(config, "py", "r", Path("/runs"), ["e"], [])
    assert argv[argv.index("--sensors") + 1].endswith("sensors_events.json")  # no camera to render
    viewing = load_config(None, ["view=true"])
    assert "view=true" in commands.trainer_argv(viewing, "py", "r", Path("/runs"), ["e"], [])
    assert "--sensors" not in commands.client_argv(viewing, 0, "py")  # the default camera, for the view
    carla = load_config(None, ["clients.count=2", "carla.executable=/opt/carla/CarlaUE4.sh",
                               "carla.port=2000", "carla.port_stride=3"])
    argv = commands.client_argv(carla, 1, "py")
    assert argv[argv.index("--world") + 1] == "carla"
    assert argv[argv.index("--port") + 1] == "2003" and argv[argv.index("--tm-port") + 1] == "8001"
    assert commands.carla_server_argv(carla, 1)[1:] == ["-RenderOffScreen", "-carla-rpc-port=2003"]
    argv = commands.trainer_argv(config, "py", "r1", Path("/runs"), config.clients.endpoints(),
                                 ["env.reconnect=false", "total_timesteps=5"])
    assert argv[argv.index("--run-name") + 1] == "r1"
    assert "endpoints=tcp://127.0.0.1:6000,tcp://127.0.0.1:6001" in argv
    assert argv[-2:] == ["env.reconnect=false", "total_timesteps=5"]  # the user's come last, and win
    argv = commands.trainer_argv(config, "py", "r1", Path("/runs"), ["tcp://127.0.0.1:6000"], [],
                                 resume=Path("/runs/r1/checkpoints/ppo_64_steps.zip"))
    assert argv[3:5] == ["--resume", "/runs/r1/checkpoints/ppo_64_steps.zip"] and "--config" not in argv
    assert commands.run_dir_of(Path("/runs/r1/checkpoints/ppo_64_steps.zip")) == Path("/runs/r1")
    assert commands.run_dir_of(Path("/runs/r1/model.zip")) == Path("/runs/r1")
    argv = commands.tensorboard_argv(config, "py", Path("/runs/r1"), 6123)
    assert argv[1:3] == ["-m", "tensorboard.main"] and argv[argv.index("--port") + 1] == "6123"


def test_binding_beyond_loopback_needs_curve_keys(tmp_path):
    from bridge.errors import ConfigError
    from launch.placement import check_client_ports, check_trainer_keys
    from launch.procs import LaunchError

    assert load_config(None, ["cluster=ray"]).cluster.bind == "loopback"  # secure by default
    with pytest.raises(ConfigError, match="cluster.bind=node .* without CurveZMQ: make keys with "
                                          "`python -m bridge.keys DIR` and set curve=DIR"):
        load_config(None, ["cluster=ray", "cluster.bind=node"])
    with pytest.raises(ConfigError, match="needs cluster=ray"):
        load_config(None, ["cluster.bind=node", f"curve={tmp_path}"])
    with pytest.raises(ConfigError, match="cluster.bind must be one of loopback, node"):
        load_config(None, ["cluster=ray", "cluster.bind=0.0.0.0"])
    with pytest.raises(LaunchError, match="clients.host=0.0.0.0 .* without CurveZMQ"):
        check_client_ports(load_config(None, ["clients.host=0.0.0.0"]))
    with pytest.raises(LaunchError, match="the trainer cannot use the CURVE keys: missing CURVE key"):
        check_trainer_keys(str(tmp_path))

    config = load_config(None, ["cluster=ray", "cluster.bind=node", f"curve={tmp_path}",
                                "clients.base_port=6000"])
    argv = commands.client_argv(config, 1, "py", host="192.0.2.7")
    assert argv[argv.index("--bind") + 1] == "tcp://192.0.2.7:6001"
    assert argv[argv.index("--curve") + 1] == str(tmp_path) and "--allow-remote" in argv
    assert config.clients.endpoint(0, "fd00::2") == "tcp://[fd00::2]:6000"
    assert load_config(None, ["clients.host=::1"]).clients.endpoints()[0] == "tcp://[::1]:5556"
    loopback = commands.client_argv(config, 1, "py")
    assert "--curve" in loopback and "--allow-remote" not in loopback  # nothing beyond loopback
    argv = commands.trainer_argv(config, "py", "r", Path("/runs"), ["tcp://192.0.2.7:6000"], [],
                                 endpoints_file=Path("/runs/r/logs/endpoints.json"))
    assert "env.endpoints_file=/runs/r/logs/endpoints.json" in argv
    assert f"env.curve={tmp_path}" in argv
    assert "env.endpoints_file" in commands.LAUNCHER_OWNED_TRAINER_KEYS


def test_a_sim_ray_restarted_on_another_node_is_written_to_the_endpoints_file(tmp_path):
    """RayPlacement.watch with a stand-in for Ray: a new pid at a new address rewrites endpoints.json."""
    from launch.placement import Supervision
    from launch.ray_placement import RayPlacement

    class Actor:
        def __init__(self, answer):
            self.answer = answer
            self.check = self

        def remote(self):
            return self.answer

    class Ray:
        @staticmethod
        def wait(refs, timeout):
            return refs, []

        @staticmethod
        def get(ref):
            return ref

    config = load_config(None, ["cluster=ray", "cluster.bind=node", f"curve={tmp_path}",
                                "clients.count=2"])
    recorded = []
    supervision = Supervision(None, lambda: False, lambda: False, lambda: False, tmp_path,
                              lambda name, pid, argv: recorded.append((name, pid)))
    placement = RayPlacement(config, "py", supervision)
    assert placement.endpoints() == []  # unknown until the sims report where they run
    first = ["tcp://10.0.0.1:5556", "tcp://10.0.0.2:5557"]
    placement._ray, placement.pids = Ray, [11, 12]
    placement._first, placement._current = list(first), list(first)
    placement._nodes, placement._restarts = ["node-a-id", "node-b-id"], [0, 0]
    placement.actors = [Actor((11, first[0], "node-a-id")),
                        Actor((22, "tcp://10.0.0.3:5557", "node-c-id"))]
    for _ in range(2):  # the first pass asks, the second reads the answers
        placement._next_watch = 0.0
        placement.watch()
    assert placement.pids == [11, 22] and recorded == [("carla_client-1", 22)]
    rows = placement.remote_rows()  # what the console shows
    assert [(r.name, r.state, r.restarts, r.ok) for r in rows] == [
        ("carla_client-0", f"{first[0]} on node node-a-i", 0, True),
        ("carla_client-1", "tcp://10.0.0.3:5557 on node node-c-i", 1, True)]
    assert placement.endpoints() == first  # what the trainer was given stays its key
    moves = json.loads(placement.endpoints_file().read_text())["endpoints"]
    assert moves == {first[0]: first[0], first[1]: "tcp://10.0.0.3:5557"}


@pytest.mark.crossversion
def test_local_sims_with_curve_are_pinged_with_the_trainers_keys(tmp_path, sim_python):
    """``launch up curve=DIR``: the readiness pings use DIR's client keys (a keyless ping is refused)."""
    from bridge.keys import create_keys
    from launch.placement import LocalPlacement, Supervision
    from launch.procs import ManagedProcess

    keys = tmp_path / "keys"
    create_keys(str(keys))
    config = load_config(None, [f"curve={keys}", f"clients.base_port={_free_port_block(1)}",
                                "clients.ready_timeout=30"])
    supervision = Supervision(
        lambda name, argv, cwd: ManagedProcess(name, argv, tmp_path / f"{name}.log",
                                               env=commands.child_env(), cwd=cwd),
        lambda: False, lambda: False, lambda: False, tmp_path, lambda *args: None)
    placement = LocalPlacement(config, sim_python, supervision)
    try:
        placement.check_free()
        placement.start()  # returns once the CURVE ping answered
        argv = placement.clients[0].process.argv
        assert argv[argv.index("--curve") + 1] == str(keys.resolve())
    finally:
        placement.stop()
    assert not placement.clients[0].process.alive()


def test_launcher_shares_the_run_name_with_the_trainer(tmp_path):
    config = load_config(None, [f"runs_dir={tmp_path}"])
    launcher = Launcher(config, ["run_name=abc", "endpoints=tcp://x:1", "total_timesteps=9"])
    assert launcher.run_dir == tmp_path / "abc" and launcher.logs_dir == tmp_path / "abc" / "logs"
    assert launcher.trainer_overrides == ["progress_bar=false", "total_timesteps=9"]
    (tmp_path / "20250101-120000").mkdir()
    import datetime
    assert default_run_name(tmp_path, datetime.datetime(2025, 1, 1, 12)) == "20250101-120000-2"


FAKE_CARLA = """
import json, os
LOG = os.environ["FAKE_CARLA_LOG"]
def note(*args):
    with open(LOG, "a") as f:
        f.write(json.dumps(args) + "\\n")
class _Settings(object):
    synchronous_mode = True
    fixed_delta_seconds = 0.05
class _World(object):
    def get_settings(self):
        return _Settings()
    def apply_settings(self, settings):
        note("apply", settings.synchronous_mode, settings.fixed_delta_seconds)
class _TM(object):
    def __init__(self, port):
        self.port = port
    def set_synchronous_mode(self, on):
        note("tm", self.port, on)
class Client(object):
    def __init__(self, host, port):
        note("client", host, port)
    def set_timeout(self, seconds):
        pass
    def get_server_version(self):
        return "0.9.15"
    def get_client_version(self):
        return "0.9.15"
    def get_world(self):
        return _World()
    def get_trafficmanager(self, port):
        return _TM(port)
"""


def test_a_bad_trainer_override_is_refused_before_anything_starts(tmp_path):
    runs = tmp_path / "runs"
    out = subprocess.run([sys.executable, "-m", "launch", "up", "run_name=t", f"runs_dir={runs}",
                          "--", "ppo.n_stpes=64"], cwd=str(REPO_ROOT), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=60, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert out.returncode == 2, out.stdout
    assert "bad trainer configuration: unknown key ppo.n_stpes" in out.stdout
    assert not runs.exists(), "nothing is created before the trainer's config is known to be good"


def test_restoring_async_mode_after_a_crash_runs_under_the_sim_python(tmp_path, sim_python):
    (tmp_path / "carla.py").write_text(FAKE_CARLA)
    log = tmp_path / "calls.jsonl"
    argv = commands.restore_async_argv(sim_python, "10.0.0.5", 2003, 8001)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
               FAKE_CARLA_LOG=str(log))
    out = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
                         text=True)
    assert out.returncode == 0, out.stdout
    assert "switched back to asynchronous mode" in out.stdout
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [["client", "10.0.0.5", 2003], ["apply", False, None], ["tm", 8001, False]]


# ==================================================================================== processes

def _free_port_block(count: int) -> int:
    for _ in range(200):
        base = random.randrange(20000, 60000)
        if not busy_ports("127.0.0.1", range(base, base + count)):
            return base
    raise RuntimeError("no block of free ports")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a live process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def _survivors(pids: set[int]) -> list[int]:
    """Live (non-zombie) processes that are one of ``pids`` or in a process group led by one of them."""
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat and stat[0] != "Z" and (int(entry) in pids or stat[1] in pids):
                alive.append(int(entry))
    return alive


class LaunchRun:
    """``python -m launch up`` in a subprocess, with its run directory under tmp_path."""

    def __init__(self, tmp_path: Path, sim_python: str, overrides: list[str], trainer: list[str],
                 flags: list[str] = (), clients: int = 2, base_port: int | None = None) -> None:
        self.run_dir = tmp_path / "runs" / "t"
        self.base_port = base_port or _free_port_block(clients)
        self.output = tmp_path / f"launcher-{len(list(tmp_path.glob('launcher-*.out')))}.out"
        argv = [sys.executable, "-m", "launch", "up", *flags, "run_name=t", f"runs_dir={tmp_path / 'runs'}",
                f"interpreters.sim_python={sim_python}", f"interpreters.trainer_python={sys.executable}",
                f"clients.count={clients}", f"clients.base_port={self.base_port}", *overrides,
                "--", *trainer]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=str(REPO_ROOT), env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def log(self, name: str) -> str:
        try:
            return (self.run_dir / "logs" / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def state(self) -> dict:
        try:
            return json.loads((self.run_dir / "logs" / "launcher.json").read_text())
        except (OSError, ValueError):
            return {}

    def pids(self, name: str | None = None) -> list[int]:
        return [p["pid"] for p in self.state().get("processes", []) if name in (None, p["name"])]

    def wait_for(self, condition, timeout: float, what: str):
        """Returns condition()'s first truthy value; fails if the launcher exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            try:
                code = self.proc.wait(0.2)  # the pause doubles as a check that the launcher lives
            except subprocess.TimeoutExpired:
                continue
            value = condition()
            if value:
                return value
            pytest.fail(f"the launcher exited ({code}) before {what}:\n{self.text()[-4000:]}")
        pytest.fail(f"timed out waiting for {what}:\n{self.text()[-4000:]}")

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the launcher did not exit in {timeout} s:\n{self.text()[-4000:]}")

    def assert_nothing_left(self) -> None:
        pids = set(self.pids()) | {self.proc.pid}
        assert len(pids) > 1, "launcher.json recorded no processes"
        assert self.proc.poll() is not None
        left = _survivors(pids)
        assert not left, f"processes left behind: {left}"

    def kill_everything(self) -> None:
        """Teardown: whatever happened, no process of this run survives the test."""
        for pid in {self.proc.pid, *self.pids()}:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def launch_run(tmp_path, sim_python):
    runs = []

    def start(overrides=(), trainer=(), flags=(), clients=2, base_port=None):
        runs.append(LaunchRun(tmp_path, sim_python, list(overrides), list(trainer), list(flags), clients,
                              base_port))
        return runs[-1]

    yield start
    for run in runs:
        run.kill_everything()
        print(f"--- launcher output:\n{run.text()[-3000:]}")


def _standins(*extra: str) -> list[str]:
    return ["tensorboard.enabled=false", f"clients.module={STANDINS}", f"trainer.module={STANDINS}",
            "restart.backoff_initial=0.1", *extra]


def _session_opened(run: LaunchRun, name: str, times: int = 1):
    return lambda: run.log(name).count("opened by client") >= times


# ------------------------------------------------------------------ supervision with stand-ins

@pytest.mark.slow
def test_standin_run_finishes_with_the_trainers_exit_code(launch_run):
    run = launch_run(_standins(), ["total_timesteps=50", "exit_code=3"])
    assert run.finish(60) == 3
    model = json.loads((run.run_dir / "model.zip").read_text())
    assert model == {"steps": 50, "reconnects": [0, 0]}
    for name in ("launcher", "trainer", "carla_client-0", "carla_client-1"):
        assert (run.run_dir / "logs" / f"{name}.log").stat().st_size > 0, name
    assert "carla_client-1: pid" in run.text() and "exited with 0" in run.text()
    assert "stopped cleanly" in run.log("carla_client-0")  # SIGTERM, not SIGKILL
    run.assert_nothing_left()


@pytest.mark.slow
def test_a_crashed_client_is_restarted_and_the_env_reconnects(launch_run):
    run = launch_run(_standins("clients.extra_args=[--step-delay, '0.004']"), ["total_timesteps=500"])
    # The stand-in trainer prints this once every env has its session and first episode: stepping.
    run.wait_for(lambda: "standin trainer: 2 envs" in run.log("trainer"), 30, "the trainer to step")
    first = run.pids("carla_client-0")[0]
    os.kill(first, signal.SIGKILL)
    assert run.finish(60) == 0
    assert len(run.pids("carla_client-0")) == 2 and len(run.pids("carla_client-1")) == 1
    assert "-9 (SIGKILL)" in run.text() and "restarted, answers" in run.text()
    model = json.loads((run.run_dir / "model.zip").read_text())
    assert model["steps"] == 500 and model["reconnects"] == [1, 0]
    run.assert_nothing_left()


@pytest.mark.slow
def test_restarts_are_rate_limited_then_the_run_stops(launch_run):
    run = launch_run(_standins("clients.extra_args=[--die-after, '20']", "restart.max_in_window=2",
                               "restart.window_seconds=60"),
                     ["total_timesteps=100000"], clients=1)
    assert run.finish(60) == 1
    assert len(run.pids("carla_client-0")) == 3  # the first start and two restarts
    assert "is not restarted: 2 restarts in the last 60 s" in run.text()
    assert list((run.run_dir / "checkpoints").glob("standin_*.txt")), "the trainer got SIGINT"
    run.assert_nothing_left()


@pytest.mark.slow
def test_sigint_stops_the_trainer_first_then_the_clients(launch_run):
    run = launch_run(_standins("clients.extra_args=[--step-delay, '0.004']", "clients.stop_timeout=1"),
                     ["total_timesteps=100000"])
    run.wait_for(lambda: "standin trainer: 2 envs" in run.log("trainer"), 30, "the trainer to step")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.finish(60) == 128 + signal.SIGINT
    text = run.text()
    assert list((run.run_dir / "checkpoints").glob("standin_*.txt"))
    assert text.index("trainer: stopping") < text.index("trainer: pid") < text.index(
        "carla_client-0: stopping")
    run.assert_nothing_left()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_stop_even_when_the_launcher_is_killed_outright(launch_run):
    run = launch_run(_standins("clients.extra_args=[--step-delay, '0.004']"), ["total_timesteps=100000"])
    run.wait_for(lambda: "standin trainer: 2 envs" in run.log("trainer"), 30, "the trainer to step")
    os.kill(run.proc.pid, signal.SIGKILL)
    run.finish(10)
    pids = set(run.pids())
    deadline = time.monotonic() + 30
    while _survivors(pids) and time.monotonic() < deadline:
        time.sleep(0.2)  # nobody to wait on: the kernel signals the orphans, they exit on their own
    assert not _survivors(pids)
    assert list((run.run_dir / "checkpoints").glob("standin_*.txt")), "the trainer got SIGTERM"


@pytest.mark.slow
def test_a_client_ignoring_sigterm_is_killed(launch_run):
    run = launch_run(_standins("clients.extra_args=[--ignore-sigterm]", "clients.stop_timeout=1"),
                     ["total_timesteps=20"], clients=1)
    assert run.finish(60) == 0
    assert "carla_client-0: still running; killing it (SIGKILL)" in run.text()
    assert "-9 (SIGKILL)" in run.text()
    run.assert_nothing_left()


@pytest.mark.slow
def test_a_client_that_fails_its_first_start_is_started_again(launch_run, tmp_path):
    marker = tmp_path / "failed-once"
    run = launch_run(_standins(f"clients.extra_args=[--fail-once, '{marker}']"), ["total_timesteps=20"],
                     clients=1)
    assert run.finish(60) == 0
    assert "exited before it was ready; starting it again" in run.text()
    assert len(run.pids("carla_client-0")) == 2
    run.assert_nothing_left()


def test_a_client_that_cannot_start_fails_the_launch_with_its_error(launch_run):
    run = launch_run(_standins("clients.module=tests.no_such_module", "restart.max_in_window=1"),
                     ["total_timesteps=20"], clients=1)
    assert run.finish(60) == 1
    text = run.text()
    assert "never became ready" in text and "No module named tests.no_such_module" in text
    assert "launch doctor" in text
    assert run.pids("trainer") == []
    run.assert_nothing_left()


def test_a_busy_port_fails_fast_with_advice(launch_run):
    base = _free_port_block(2)
    with socket.socket() as held:
        held.bind(("127.0.0.1", base + 1))
        held.listen()
        run = launch_run(_standins(), ["total_timesteps=10"], base_port=base)
        assert run.finish(30) == 1
    assert f"port(s) {base + 1}" in run.text() and "clients.base_port=PORT" in run.text()
    assert run.pids() == []  # nothing was started


# ------------------------------------------------------------------ doctor

def test_doctor_passes_and_pings_the_bridge(sim_python):
    base = _free_port_block(2)
    out = subprocess.run([sys.executable, "-m", "launch", "doctor", f"clients.base_port={base}",
                          f"interpreters.sim_python={sim_python}"], cwd=str(REPO_ROOT),
                         env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=240, text=True)
    assert out.returncode == 0, out.stdout
    assert "[  ok] bridge ping" in out.stdout and "round trip" in out.stdout
    assert "sim: import carla_client" in out.stdout and "trainer: import stable_baselines3" in out.stdout


def test_doctor_fails_with_fixes():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "launch", "doctor", "--no-ping",
                              "interpreters.sim_python=/nonexistent/python3.6",
                              f"clients.base_port={port}", "clients.count=1", "world=carla",
                              "carla.port=1"],
                             cwd=str(REPO_ROOT), env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240, text=True)
    assert out.returncode == 1
    assert "[FAIL] sim interpreter" in out.stdout and "setup_envs.py" in out.stdout
    assert f"[FAIL] port {port}" in out.stdout and "ss -ltnp" in out.stdout
    assert "[FAIL] CARLA server 127.0.0.1:1" in out.stdout and "-carla-rpc-port=1" in out.stdout


# ==================================================================================== end to end

# A tiny PPO budget: two rollouts of 64 steps per env, checkpoints every 64 steps per env.
TINY = ["ppo.n_steps=64", "ppo.batch_size=64", "ppo.n_epochs=1", "checkpoint_every=128",
        "policy.cnn_dim=32", "policy.state_dim=16"]


def _events_written(run: LaunchRun):
    return lambda: list(run.run_dir.glob("events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_e2e_trains_and_tensorboard_serves_the_runs_scalars(launch_run):
    tb_port = first_free_port("127.0.0.1", random.randrange(30000, 60000))
    run = launch_run([f"tensorboard.port={tb_port}", "tensorboard.reload_interval=1"],
                     ["total_timesteps=256", *TINY], flags=["--keep-tensorboard-seconds", "60"])
    url = run.wait_for(lambda: run.state().get("tensorboard_url"), 90, "TensorBoard's URL")
    assert url.startswith("http://127.0.0.1:")
    run.wait_for(lambda: (run.run_dir / "model.zip").exists() and "trainer: pid" in run.text(), 120,
                 "the trainer to finish")
    assert sorted(p.name for p in (run.run_dir / "checkpoints").glob("*.zip")) == [
        "ppo_128_steps.zip", "ppo_256_steps.zip"]

    def scalar_tags():
        try:
            with urllib.request.urlopen(url + "data/plugin/scalars/tags", timeout=5) as reply:
                tags = json.load(reply)
        except OSError:
            return None
        names = {tag for run_tags in tags.values() for tag in run_tags}
        return names if {"time/fps", "train/value_loss"} <= names else None

    tags = run.wait_for(scalar_tags, 60, "TensorBoard to serve the run's scalars")
    assert any(tag.startswith("bridge/") for tag in tags)
    os.kill(run.proc.pid, signal.SIGINT)  # end the --keep-tensorboard-seconds wait early
    assert run.finish(60) == 0  # the trainer's exit code, not the signal's: training had finished
    run.assert_nothing_left()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_e2e_kill_9_of_a_carla_client_mid_run(launch_run):
    run = launch_run(["tensorboard.enabled=false"],
                     ["total_timesteps=1024", *TINY])
    run.wait_for(_events_written(run), 90, "training to start")
    run.wait_for(_session_opened(run, "carla_client-0"), 30, "a session on carla_client-0")
    os.kill(run.pids("carla_client-0")[0], signal.SIGKILL)
    assert run.finish(150) == 0
    assert (run.run_dir / "model.zip").exists()
    assert len(run.pids("carla_client-0")) == 2
    assert "carla_client-0: pid" in run.text() and "-9 (SIGKILL)" in run.text()
    assert "reconnecting" in run.log("trainer")
    run.assert_nothing_left()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_e2e_sigint_saves_a_checkpoint_leaves_nothing_and_the_run_resumes(launch_run):
    run = launch_run(["tensorboard.enabled=false"], ["total_timesteps=1000000", *TINY])
    run.wait_for(_events_written(run), 90, "training to start")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.finish(120) == 128 + signal.SIGINT
    checkpoints = list((run.run_dir / "checkpoints").glob("ppo_*_steps.zip"))
    assert checkpoints, run.log("trainer")
    assert "interrupted" in run.log("trainer")
    run.assert_nothing_left()

    steps = max(int(p.name.split("_")[1]) for p in checkpoints)
    again = launch_run(["tensorboard.enabled=false"], [f"total_timesteps={steps + 128}"],
                       flags=["--resume", str(run.run_dir)])
    assert again.finish(150) == 0, again.log("trainer")
    assert (run.run_dir / "model.zip").exists()
    assert f"at step {steps}" in again.log("trainer")  # agent.train: "resumed <zip> at step N"
    again.assert_nothing_left()
