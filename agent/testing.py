"""Test doubles: a tiny ring-road WorldBackend and a client wrapper that fails on demand.

They let the env's logic (spaces, clipping, reward terms, reconnects) be tested in milliseconds without
a sim process; the real bridge and the built-in world are exercised by the smoke tests.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from bridge.schema import LEAD_RANGE, MEASUREMENT_SPEC, VEHICLE_CONTROL_SPEC, VehicleControl
from bridge.spec import FieldSpec, Tick, WorldSpec
from carla_client.backend import WorldBackend


class RingWorld(WorldBackend):
    """A kinematic car on a circular one-lane road of radius ``radius`` metres (counter-clockwise).

    The camera is a flat colour whose red channel encodes the lateral offset; good enough to check
    shapes and conversions. Collisions happen when the car leaves the road by more than ``wall``.
    """

    name = "ring"
    version = "test"
    deterministic = True

    def __init__(self, radius: float = 30.0, half_width: float = 2.0, wall: float = 4.0,
                 camera: tuple[int, int] | None = (48, 80), tick_seconds: float = 0.05) -> None:
        self.radius, self.half_width, self.wall = radius, half_width, wall
        self.camera = camera
        self.tick_seconds = tick_seconds
        self.frame = 0
        self.started = 0
        self.stopped = 0
        self._state = np.zeros(4)

    def spec(self) -> WorldSpec:
        observation = ()
        if self.camera is not None:
            observation = (FieldSpec("camera", "uint8", (self.camera[0], self.camera[1], 4), 0, 255,
                                     "BGRA"),)
        return WorldSpec(observation, MEASUREMENT_SPEC, VEHICLE_CONTROL_SPEC, self.tick_seconds)

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        self.stopped += 1

    def reset(self, seed: int | None, options: dict[str, Any]) -> Tick:
        rng = np.random.default_rng(seed)
        # x, y, yaw (rad), speed; start on the circle heading along it, slightly off-centre
        angle0 = 0.0
        offset = float(rng.uniform(-0.3, 0.3))
        r = self.radius + offset
        self._state = np.array([r * math.cos(angle0), r * math.sin(angle0), angle0 + math.pi / 2, 0.0])
        self._distance = 0.0
        self._angle = angle0
        self.frame += 1
        return self._tick([])

    def step(self, control: VehicleControl) -> Tick:
        x, y, yaw, v = self._state
        dt = self.tick_seconds
        v = max(0.0, v + (4.0 * control.throttle - 8.0 * control.brake - 0.1 * v) * dt)
        yaw += v / 2.5 * math.tan(math.radians(35.0) * control.steer) * dt
        x += v * math.cos(yaw) * dt
        y += v * math.sin(yaw) * dt
        self._state = np.array([x, y, yaw, v])
        angle = math.atan2(y, x)
        delta = (angle - self._angle + math.pi) % (2 * math.pi) - math.pi
        self._angle = angle
        self._distance += delta * self.radius
        self.frame += 1
        events = []
        if abs(math.hypot(x, y) - self.radius) > self.wall:
            events.append({"type": "collision", "frame": self.frame, "other": "wall",
                           "intensity": v})
        return self._tick(events)

    def _tick(self, events: list) -> Tick:
        x, y, yaw, v = self._state
        angle = math.atan2(y, x)
        lane = angle + math.pi / 2
        offset = math.hypot(x, y) - self.radius  # outside the circle = right of a CCW lane
        heading = (yaw - lane + math.pi) % (2 * math.pi) - math.pi
        yaw_deg = (math.degrees(yaw) + 180.0) % 360.0 - 180.0
        measurements = {
            "location": np.array([x, y, 0.0]), "yaw": yaw_deg,
            "velocity": np.array([v * math.cos(yaw), v * math.sin(yaw), 0.0]), "speed": v,
            "acceleration": np.zeros(3), "lateral_offset": offset, "heading_error": heading,
            "route_distance": self._distance,
            "route_completion": self._distance / (2 * math.pi * self.radius),
            "off_road": abs(offset) > self.half_width + 1.0,
            "lead_distance": LEAD_RANGE, "lead_closing_speed": 0.0,  # alone on the ring
        }
        observation = {}
        if self.camera is not None:
            image = np.zeros((self.camera[0], self.camera[1], 4), np.uint8)
            image[..., 2] = int(np.clip(128 + 30 * offset, 0, 255))  # red channel (BGRA)
            image[..., 1] = 100
            image[..., 3] = 255
            observation["camera"] = image
        return Tick(self.frame, self.frame * self.tick_seconds, observation, measurements, events)


class FlakyClient:
    """Wraps a client; ``fail_next`` makes its next step raise the given exception once."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fail_next: BaseException | None = None
        #: each reset in turn (blocking or sent) raises the next of these instead of resetting
        self.fail_resets: list[BaseException] = []
        self._failing: BaseException | None = None
        self.stats = inner.stats

    def hello(self) -> Any:
        return self.inner.hello()

    def reset(self, seed: int | None = None, options: dict | None = None) -> Any:
        if self.fail_resets:
            raise self.fail_resets.pop(0)
        return self.inner.reset(seed=seed, options=options)

    def step(self, action: dict) -> Any:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        return self.inner.step(action)

    @property
    def wait_sockets(self) -> tuple:
        return self.inner.wait_sockets

    def send_reset(self, seed: int | None = None, options: dict | None = None) -> None:
        """Sends; with ``fail_resets`` given, the matching ``recv_tick`` raises the first instead."""
        self._failing = self.fail_resets.pop(0) if self.fail_resets else None
        if self._failing is None:
            self.inner.send_reset(seed=seed, options=options)

    def send_step(self, action: dict) -> None:
        """Sends; with ``fail_next`` set, the matching ``recv_tick`` raises it instead."""
        self._failing, self.fail_next = self.fail_next, None
        if self._failing is None:
            self.inner.send_step(action)

    def recv_tick(self, block: bool = True) -> Any:
        error, self._failing = self._failing, None
        if error is not None:
            raise error
        return self.inner.recv_tick(block)

    def close(self) -> None:
        self.inner.close()
