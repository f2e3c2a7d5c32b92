"""Watching the car: the camera upscaled with a text overlay, in a video file or a live OpenCV window.

``annotate`` draws a frame (evaluation videos and the live view share it). ``LiveView`` is the window
of ``launch up view=true`` and ``agent.evaluate --show``: it redraws at most once per sim tick of wall
time, so watching costs the trainer a few milliseconds a second; closing it (or pressing q or Esc)
only stops the drawing; without a display it warns once and stays off, never crashing the trainer.
``LiveViewCallback`` feeds it from the first training env.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import socket
import sys
import time
from typing import Any, Callable

import cv2
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

log = logging.getLogger(__name__)

WINDOW_TITLE = "carla-zmq-bridge"
_CLOSE_KEYS = (ord("q"), 27)  # q, Esc


def overlay_lines(episode: int, step: int, info: dict[str, Any], reward: float, ret: float
                  ) -> list[str]:
    """The overlay's text: lap progress, speed, offset, steer, throttle/brake, reward and return
    (and the gap to the vehicle ahead when the env reports it)."""
    return [
        f"ep {episode}  step {step}  lap {100 * info.get('route_completion', 0.0):5.1f}%",
        f"speed {info.get('speed', 0.0):5.2f} m/s  offset {info.get('lateral_offset', 0.0):+5.2f} m",
        f"steer {info.get('steer', 0.0):+5.2f}  throttle {info.get('throttle', 0.0):4.2f}  "
        f"brake {info.get('brake', 0.0):4.2f}",
        f"reward {reward:+6.3f}  return {ret:8.2f}"
        + (f"  lead {info['lead_distance']:4.1f} m" if "lead_distance" in info else ""),
    ]


def annotate(rgb: np.ndarray, lines: list[str], height: int = 384) -> np.ndarray:
    """An RGB frame upscaled to ``height`` pixels, with ``lines`` over a translucent band (BGR out)."""
    h, w = rgb.shape[:2]
    scale = height / h
    frame = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (round(w * scale), height),
                       interpolation=cv2.INTER_NEAREST if scale >= 2 else cv2.INTER_LINEAR)
    panel = frame.copy()
    cv2.rectangle(panel, (0, 0), (frame.shape[1], 14 + 18 * len(lines)), (0, 0, 0), -1)
    frame = cv2.addWeighted(panel, 0.55, frame, 0.45, 0)
    for i, text in enumerate(lines):
        cv2.putText(frame, text, (6, 18 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return frame


def gui_backend() -> str:
    """OpenCV's GUI backend as its build information names it (``QT5``, ``GTK3``...; ``NONE``)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip() or "NONE"
    return "NONE"


def display_problem() -> str | None:
    """Why no window can open here, or None when one can.

    Checked before any OpenCV GUI call: OpenCV's Qt backend aborts the whole process when it cannot
    reach the display, which must never happen to a trainer.
    """
    if not sys.platform.startswith("linux"):
        return None  # Windows and macOS always have a desktop session for a local user
    if gui_backend() == "NONE":
        return ("this OpenCV build has no GUI (opencv-python-headless): install opencv-python, "
                "e.g. by running `python3 scripts/setup_envs.py` again")
    display = os.environ.get("DISPLAY")
    if not display:
        return "no display ($DISPLAY is not set: a terminal without X, ssh without -X, CI)"
    library = ctypes.util.find_library("X11")
    if library:
        try:
            xlib = ctypes.CDLL(library)
            xlib.XOpenDisplay.restype = ctypes.c_void_p
            xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
            xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
            handle = xlib.XOpenDisplay(display.encode())
        except (OSError, AttributeError):
            handle = 1  # cannot ask libX11: fall through to assuming the display works
        else:
            if not handle:
                return f"cannot connect to the X display {display!r}"
            xlib.XCloseDisplay(handle)
        return None
    host, _, number = display.rpartition(":")
    number = number.split(".")[0]
    if not host or host == "unix":
        if not os.path.exists(f"/tmp/.X11-unix/X{number}"):
            return f"no X server socket for display {display!r}"
        return None
    try:
        socket.create_connection((host, 6000 + int(number)), timeout=1.0).close()
    except (OSError, ValueError):
        return f"cannot connect to the X display {display!r}"
    return None


class LiveView:
    """An OpenCV window showing annotated frames, redrawn at most every ``min_interval`` seconds.

    Args:
        title: the window's title.
        min_interval: the shortest wall time between two redraws (the sim's tick length).
        height: frames are upscaled to this many pixels.
        clock: monotonic seconds (tests).
    """

    def __init__(self, title: str = WINDOW_TITLE, min_interval: float = 0.05, height: int = 384,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.title = title
        self.min_interval = min_interval
        self.height = height
        self.clock = clock
        self.frames = 0
        self.state = "new"  # new, open, closed (by the user), unavailable
        self._last = -float("inf")

    @property
    def active(self) -> bool:
        return self.state in ("new", "open")

    def due(self) -> bool:
        """True when a frame given now would be drawn (check it before building one)."""
        return self.active and self.clock() - self._last >= self.min_interval

    def show(self, rgb: np.ndarray, lines: list[str]) -> bool:
        """Draws ``rgb`` with ``lines`` if due; returns False once the window is closed or unavailable."""
        if not self.due():
            return self.active
        self._last = self.clock()
        if self.state == "new":
            problem = display_problem()
            if problem is not None:
                self.state = "unavailable"
                log.warning("live view off: %s. Training and evaluation go on without it.", problem)
                return False
            try:
                cv2.namedWindow(self.title, cv2.WINDOW_AUTOSIZE)
            except cv2.error as e:
                self.state = "unavailable"
                log.warning("live view off: OpenCV cannot open a window (%s)", e)
                return False
            self.state = "open"
        elif self._closed_by_user():
            self.state = "closed"
            log.info("live view closed; training goes on")
            return False
        try:
            cv2.imshow(self.title, annotate(rgb, lines, self.height))
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as e:
            self.state = "unavailable"
            log.warning("live view off: %s", e)
            return False
        self.frames += 1
        if key in _CLOSE_KEYS:
            self.close()
            self.state = "closed"
            return False
        return True

    def _closed_by_user(self) -> bool:
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:  # the window is gone
            return True

    def close(self) -> None:
        """Closes the window if open. Idempotent."""
        if self.state == "open":
            self.state = "closed"
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass

    def __enter__(self) -> "LiveView":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class LiveViewCallback(BaseCallback):
    """Shows the first training env's camera in a LiveView while PPO collects experience.

    The frame comes from ``env.render()`` (the env must have ``render_mode="rgb_array"``), asked for
    only when the view is due, so between redraws the callback costs a clock read.
    """

    def __init__(self, view: LiveView) -> None:
        super().__init__()
        self.view = view
        self._episode = 0
        self._step = 0
        self._return = 0.0

    def _on_step(self) -> bool:
        infos, rewards, dones = self.locals.get("infos"), self.locals.get("rewards"), self.locals.get("dones")
        if infos is None or rewards is None:
            return True
        reward = float(rewards[0])
        self._return += reward
        self._step += 1
        if self.view.due():
            frames = self.training_env.env_method("render", indices=[0])
            if frames and frames[0] is not None:
                self.view.show(frames[0], overlay_lines(self._episode, self._step, infos[0], reward,
                                                        self._return))
        if dones is not None and dones[0]:
            self._episode += 1
            self._step, self._return = 0, 0.0
        return True

    def _on_training_end(self) -> None:
        self.view.close()
