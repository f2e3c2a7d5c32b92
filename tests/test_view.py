"""The live view (agent/view.py): a window under a virtual X server, screenshots, and no display.

OpenCV's GUI runs only in subprocesses here: without a display its Qt backend aborts its process,
which must not be pytest's.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from agent.view import annotate, gui_backend, overlay_lines
from launch.interpreters import REPO_ROOT
from launch.procs import child_env
from tests.xvfb import MISSING_REASON, XVFB, VirtualDisplay

needs_xvfb = pytest.mark.skipif(XVFB is None, reason=MISSING_REASON)
needs_gui = pytest.mark.skipif(gui_backend() == "NONE", reason=(
    "this venv's OpenCV has no GUI (opencv-python-headless, installed by scripts/setup_envs.py where "
    "opencv-python cannot load libGL): no window to test"))
SHOW_EVALUATION = [sys.executable, "-m", "agent.evaluate", "--random", "--show",
                   "--endpoint", "inprocess://builtin", "--episodes", "1"]


@pytest.fixture
def display():
    with VirtualDisplay(640, 480) as virtual:
        yield virtual


def _env(display=None):
    env = child_env()
    env.pop("WAYLAND_DISPLAY", None)
    if display is None:
        env.pop("DISPLAY", None)
    else:
        env["DISPLAY"] = display.display
    return env


def test_overlay_is_drawn_on_the_upscaled_camera():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[40:] = (0, 200, 0)
    info = {"route_completion": 0.25, "speed": 9.5, "steer": -0.1, "throttle": 0.6, "brake": 0.0}
    lines = overlay_lines(2, 40, info, 1.5, 60.0)
    assert lines[0].startswith("ep 2  step 40  lap  25.0%") and "speed  9.50 m/s" in lines[1]
    frame = annotate(rgb, lines, 384)
    assert frame.shape == (384, 384, 3)
    band = frame[:14 + 18 * len(lines)]
    assert (band == 255).any(), "white text in the band"
    assert frame[-10:, :, 1].mean() > 150  # the green ground, upscaled (BGR: green stays index 1)


def test_without_a_display_the_view_warns_and_evaluation_goes_on():
    result = subprocess.run(SHOW_EVALUATION + ["env.max_episode_steps=20"], cwd=REPO_ROOT, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "live view off:" in result.stderr and "go on without it" in result.stderr
    assert "random policy, 1 episodes" in result.stdout


@needs_xvfb
@needs_gui
def test_window_rate_limit_and_closing_it(display):
    result = subprocess.run([sys.executable, "-m", "tests.peers.view_peer"], cwd=REPO_ROOT,
                            env=_env(display), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["all_shown"] and report["drawn_at_rate"] == 25  # 100 calls, 1 in 4 due
    assert report["after_close"] is False and report["later"] is False
    assert report["state"] == "closed" and report["frames"] == 25, report


@needs_xvfb
@needs_gui
def test_evaluate_show_opens_a_window_with_the_camera_and_overlay(display, tmp_path):
    proc = subprocess.Popen(SHOW_EVALUATION + ["env.max_episode_steps=1500"], cwd=REPO_ROOT,
                            env=_env(display), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    best = None
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            shot = display.screenshot()
            lit = shot.max(axis=2) > 0
            if best is None or lit.sum() > best[1]:
                best = (shot, int(lit.sum()))
            time.sleep(0.1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "live view off" not in err
    assert best is not None and best[1] > 300 * 300, "no window of the camera's size appeared"
    shot = best[0]
    np.save(str(tmp_path / "screenshot.npy"), shot)
    _save_png(shot, os.environ.get("CZB_VIEW_SCREENSHOT"))
    ys, xs = np.nonzero(shot.max(axis=2) > 0)
    window = shot[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    assert window.shape[0] >= 384 and window.shape[1] >= 384
    assert (window[:80] == 255).all(axis=2).sum() > 50, "the overlay's white text"
    assert window.std() > 20, "a camera picture, not a flat colour"


def _save_png(rgb, path):
    """Keeps the screenshot where CZB_VIEW_SCREENSHOT says (how the README's picture was made)."""
    if path:
        import cv2
        cv2.imwrite(path, rgb[..., ::-1])


@needs_xvfb
@needs_gui
def test_training_with_view_shows_the_first_envs_camera(display, tmp_path):
    command = [sys.executable, "-m", "agent.train", "--run-name", "viewed", f"runs_dir={tmp_path}",
               "endpoints=inprocess://builtin?npc=2", "view=true", "total_timesteps=2048",
               "ppo.n_steps=256", "ppo.batch_size=64", "ppo.n_epochs=1", "progress_bar=false"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=_env(display), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lit = 0
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            lit = max(lit, int((display.screenshot().max(axis=2) > 0).sum()))
            time.sleep(0.2)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "live view off" not in err
    assert lit > 300 * 300, "no window of the camera's size appeared while training"
    assert (tmp_path / "viewed" / "model.zip").is_file()
