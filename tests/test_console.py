"""The launcher's console (launch/console.py) and the trainer's status channel (agent/status.py)."""
import io
import json
import time
from pathlib import Path

import pytest

from agent.status import read_status, status_path, write_status
from launch.console import (PlainConsole, ProcessRow, Snapshot, make_console, progress_line,
                            render_panel, trainer_health)
from tests.test_launch import _standins, launch_run  # noqa: F401 (a fixture)


def _status(**changes):
    status = {"phase": "collecting", "updated": time.time(), "num_timesteps": 500,
              "total_timesteps": 1000, "steps_per_second": 125.0, "eta_seconds": 4.0, "episodes": 3,
              "device": "cpu", "last_episode": {"return": 12.5, "route_completion": 0.42,
                                                "collisions": 1, "lap_completed": False, "length": 80}}
    status.update(changes)
    return status


def _snapshot(status):
    rows = [ProcessRow("carla_client-0", "running", 2, Path("runs/x/logs/carla_client-0.log")),
            ProcessRow("trainer", "collecting", 0, Path("runs/x/logs/trainer.log"))]
    return Snapshot("x", "http://127.0.0.1:6006/", rows, status, rows[1])


# ------------------------------------------------------------------ the status channel

def test_status_file_round_trip_and_unreadable_files(tmp_path):
    path = status_path(tmp_path)
    assert read_status(path) is None  # not written yet
    write_status(path, _status())
    assert read_status(path)["num_timesteps"] == 500
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary file left over
    path.write_text('{"num_timesteps": 5')  # a torn file (not ours: ours are replaced in one rename)
    assert read_status(path) is None
    path.write_text(json.dumps({"num_timesteps": 5}))  # no "updated": not a status
    assert read_status(path) is None


# ------------------------------------------------------------------ trainer health

def test_a_dead_trainer_shows_as_dead_with_its_exit_code():
    now = time.time()
    text, ok = trainer_health(_status(updated=now), False, "-9 (SIGKILL)", now - 60, now)
    assert not ok and text.startswith("exited -9 (SIGKILL)")
    text, ok = trainer_health(_status(phase="finished", updated=now), False, "0", now - 60, now)
    assert ok and text == "exited 0 (finished)"


def test_a_trainer_that_stops_reporting_shows_as_silent_within_seconds():
    now = time.time()
    assert trainer_health(_status(updated=now - 2), True, "", now - 60, now) == ("collecting", True)
    text, ok = trainer_health(_status(updated=now - 15), True, "", now - 60, now)
    assert not ok and text.startswith("SILENT for 15 s") and "step 500" in text
    # a PPO update reports nothing: three times the previous update's duration is allowed
    updating = _status(phase="updating", last_update_seconds=8.0, updated=now - 15)
    assert trainer_health(updating, True, "", now - 60, now) == ("updating", True)
    updating["updated"] = now - 30
    assert not trainer_health(updating, True, "", now - 60, now)[1]


def test_start_up_and_a_previous_runs_status_file():
    now = time.time()
    assert trainer_health(None, True, "", now - 5, now) == ("starting", True)
    # a resumed run finds the last run's file: it does not count as a report of this process
    old = _status(phase="interrupted", updated=now - 3600)
    assert trainer_health(old, True, "", now - 5, now) == ("starting", True)
    text, ok = trainer_health(None, True, "", now - 500, now)
    assert not ok and "SILENT" in text
    assert trainer_health(None, None, "", None, now) == ("not started", True)


# ------------------------------------------------------------------ rendering

def test_progress_line_has_steps_rate_eta_episode_processes_and_tensorboard():
    line = progress_line(_snapshot(_status()))
    for part in ("step 500/1,000 (50%)", "125 steps/s", "ETA 00:04", "return 12.5",
                 "route completion 42%", "collisions 1", "carla_client-0 running (restarted 2x)",
                 "device cpu", "TensorBoard http://127.0.0.1:6006/"):
        assert part in line, (part, line)


def test_live_panel_renders_every_part():
    from rich.console import Console

    console = Console(file=io.StringIO(), width=140, color_system=None)
    console.print(render_panel(_snapshot(_status())))
    text = console.file.getvalue()
    for part in ("run x", "500/1,000 steps", "125 steps/s", "ETA 00:04", "return 12.5",
                 "device", "cpu", "http://127.0.0.1:6006/", "carla_client-0", "running",
                 "runs/x/logs/trainer.log"):
        assert part in text, (part, text)


def test_without_a_terminal_a_plain_line_at_most_every_30_seconds():
    now = [0.0]
    out = io.StringIO()
    snaps = [_snapshot(None)]
    console = PlainConsole(lambda: snaps[0], out, clock=lambda: now[0])
    console.update()
    assert out.getvalue() == ""  # nothing to say before the trainer's first report
    snaps[0] = _snapshot(_status())
    while now[0] <= 95.0:
        console.update()
        now[0] += 0.25
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and all(line.startswith("progress: step 500/1,000") for line in lines)
    console.update(final=True)  # the final line is printed whatever the interval
    assert len(out.getvalue().splitlines()) == 5


def test_auto_mode_picks_plain_lines_for_a_pipe_and_the_panel_for_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert type(make_console("auto", lambda: None, stream=io.StringIO())).__name__ == "PlainConsole"
    assert type(make_console("auto", lambda: None, stream=Tty())).__name__ == "LiveConsole"
    assert make_console("off", lambda: None) is None


# ------------------------------------------------------------------ the launcher, end to end

@pytest.mark.slow
def test_launcher_prints_progress_and_flags_a_silent_trainer(launch_run):
    run = launch_run(_standins("console=plain", "clients.extra_args=[--step-delay, '0.002']"),
                     ["total_timesteps=100000", "go_silent_at=300"], clients=1)
    run.wait_for(lambda: "progress: step" in run.text(), 60, "a progress line")
    run.wait_for(lambda: "going silent" in run.log("trainer"), 60, "the trainer to go silent")
    silent_from = time.monotonic()
    run.wait_for(lambda: "trainer: SILENT for" in run.text(), 40, "the console to flag the trainer")
    assert time.monotonic() - silent_from < 30
    status = read_status(status_path(run.run_dir))
    assert status["num_timesteps"] >= 290 and status["device"] == "standin"
    run.proc.send_signal(2)
    assert run.finish(60) == 130
    assert run.text().count("progress: step") >= 2  # the last line at the end
    run.assert_nothing_left()
