"""The driving reward: a weighted sum of named terms computed from two consecutive ticks' measurements.

Every term is reported separately (``info["reward_<term>"]``) so TensorBoard and the evaluation table
can show which part of the reward a policy is earning or losing.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

#: names of the reward terms, in the order they are reported.
TERMS = ("progress", "speed", "centre", "heading", "collision", "lane_invasion", "off_road")


@dataclass(frozen=True)
class RewardConfig:
    """Weights and shapes of the reward terms (all per tick).

    Attributes:
        progress: per metre of route travelled this tick (negative when driving backwards).
        speed: weight of the speed-tracking term ``1 - |v_lane - target| / target`` (clipped below
            at -1), where ``v_lane = speed * cos(heading_error)`` is the speed along the lane (so
            circling or sliding sideways earns nothing). Driving along the lane at the target speed
            earns ``speed`` per tick, standing still nothing. With ``speed >= progress * target *
            tick`` the total peaks at the target speed instead of growing with speed.
        target_speed: the speed to track, m/s.
        centre: weight of the penalty ``-(offset / lane_half_width)**2`` (clipped at -4). A penalty
            rather than a bonus, so standing still in the middle of the lane earns nothing.
        lane_half_width: metres from the lane centre at which the centring penalty is ``-centre``.
        heading: weight of ``cos(heading_error) - 1`` (zero when aligned with the lane, <= 0).
        collision: penalty per collision event (positive number, subtracted).
        lane_invasion: penalty per lane-invasion event.
        off_road: penalty on a tick that ends off the road.
        max_progress: clip of the per-tick progress in metres (guards against route wrap-around jumps).
        follow_headway: with a vehicle ahead in the lane (the ``lead_distance`` measurement), the
            speed term tracks ``min(target_speed, (lead_distance - follow_gap) / follow_headway)``
            instead of ``target_speed``: the speed at which the gap would close in ``follow_headway``
            seconds, so following at a safe distance earns the full speed term. 0 turns it off.
        follow_gap: the bumper-to-bumper gap, metres, at which that speed is zero (stand behind).
        overspeed: weight of the extra penalty ``-(v_lane - target) / target_speed`` above the
            speed term's target (the progress term pays for speed, so without it driving too fast
            costs little: too fast into an unseen curve, or into the car ahead). 0 turns it off.
    """

    progress: float = 1.0
    speed: float = 1.0
    target_speed: float = 10.0
    centre: float = 0.3
    lane_half_width: float = 1.75
    heading: float = 0.1
    collision: float = 10.0
    lane_invasion: float = 1.0
    off_road: float = 10.0
    max_progress: float = 5.0
    follow_headway: float = 0.0
    follow_gap: float = 4.0
    overspeed: float = 0.0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "RewardConfig":
        """Builds a config from a (partial) mapping.

        Raises:
            ValueError: an unknown key, or a value that is not a finite number.
        """
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown reward setting(s) {unknown}; known: {sorted(known)}")
        out = {}
        for key, value in values.items():
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"reward setting {key!r} must be finite, got {value!r}")
            out[key] = number
        if out.get("target_speed", cls.target_speed) <= 0:
            raise ValueError("reward setting 'target_speed' must be positive")
        if out.get("overspeed", cls.overspeed) < 0:
            raise ValueError("reward setting 'overspeed' must be 0 (off) or positive")
        if out.get("follow_headway", cls.follow_headway) < 0:
            raise ValueError("reward setting 'follow_headway' must be 0 (off) or positive")
        if out.get("lane_half_width", cls.lane_half_width) <= 0:
            raise ValueError("reward setting 'lane_half_width' must be positive")
        return cls(**out)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def count_events(events: Sequence[Mapping[str, Any]], kind: str) -> int:
    return sum(1 for e in events if e.get("type") == kind)


def compute_reward(previous: Mapping[str, Any], current: Mapping[str, Any],
                   events: Sequence[Mapping[str, Any]], config: RewardConfig
                   ) -> tuple[float, dict[str, float]]:
    """Returns the total reward of one tick and its terms (already weighted, summing to the total).

    Args:
        previous: the measurements of the tick before (after reset: the reset tick's).
        current: this tick's measurements (MEASUREMENT_SPEC names).
        events: this tick's events (``{"type": "collision", ...}``, ``{"type": "lane_invasion", ...}``).
        config: weights.
    """
    progress = float(current["route_distance"]) - float(previous["route_distance"])
    progress = max(-config.max_progress, min(config.max_progress, progress))
    heading_error = float(current["heading_error"])
    speed = float(current["speed"]) * math.cos(heading_error)
    target = config.target_speed
    if config.follow_headway > 0 and "lead_distance" in current:
        safe = (float(current["lead_distance"]) - config.follow_gap) / config.follow_headway
        target = min(target, max(0.0, safe))
    speed_score = max(-1.0, 1.0 - abs(speed - target) / config.target_speed)
    speed_score -= config.overspeed * max(0.0, speed - target) / config.target_speed
    offset = float(current["lateral_offset"]) / config.lane_half_width
    centre_score = -min(4.0, offset * offset)
    heading_score = math.cos(heading_error) - 1.0
    terms = {
        "progress": config.progress * progress,
        "speed": config.speed * speed_score,
        "centre": config.centre * centre_score,
        "heading": config.heading * heading_score,
        "collision": -config.collision * count_events(events, "collision"),
        "lane_invasion": -config.lane_invasion * count_events(events, "lane_invasion"),
        "off_road": -config.off_road * float(bool(current["off_road"])),
    }
    return float(sum(terms.values())), terms
