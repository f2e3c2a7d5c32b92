"""The env's action space, built from the action fields the sim announces, and its mapping to controls."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from gymnasium import spaces

from bridge.errors import SpecError
from bridge.spec import FieldSpec

#: the control fields the policy drives; the sim must announce them as bounded scalars.
DRIVEN_FIELDS = ("steer", "throttle", "brake")
ACTION_MODES = ("2d", "3d")


class ActionMapping:
    """Turns a policy's action vector into the control map the sim's announced action spec asks for.

    ``mode="2d"``: ``Box([steer.low, -brake.high], [steer.high, throttle.high])`` = (steer, pedal); a
    positive pedal is throttle, a negative one brake. ``mode="3d"``: (steer, throttle, brake), each
    within its announced bounds. With CARLA's ranges these are ``Box([-1, -1], [1, 1])`` and
    ``Box([-1, 0, 0], [1, 1, 1])``. Every other announced field (``hand_brake``, ``reverse``...) is
    sent at its neutral value: False, or 0 moved into the field's bounds.

    Args:
        action_spec: the ``WorldSpec.action`` fields from the sim's ``hello``.
        mode: ``"2d"`` or ``"3d"``.
        out_of_range: ``"clip"`` or ``"raise"`` for actions outside the space.

    Raises:
        SpecError: a driven field is missing, not a scalar, or unbounded; another field not a scalar.
        ValueError: an unknown mode or out_of_range.
    """

    def __init__(self, action_spec: Sequence[FieldSpec], mode: str = "2d",
                 out_of_range: str = "clip") -> None:
        if mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be '2d' or '3d', got {mode!r}")
        if out_of_range not in ("clip", "raise"):
            raise ValueError(f"out_of_range must be 'clip' or 'raise', got {out_of_range!r}")
        self.mode, self.out_of_range = mode, out_of_range
        fields = {f.name: f for f in action_spec}
        for name in DRIVEN_FIELDS:
            field = fields.get(name)
            if field is None or field.shape != () or field.low is None or field.high is None:
                raise SpecError(f"the sim's action spec must have a bounded scalar {name!r} field to "
                                f"drive; it announced {[f.to_wire() for f in action_spec]}")
        for field in action_spec:
            if field.shape != ():
                raise SpecError(f"action field {field.name!r} has shape {field.shape}; the env can "
                                "only fill scalar control fields")
        self._bounds = {n: (float(fields[n].low), float(fields[n].high)) for n in DRIVEN_FIELDS}
        self._neutral = {f.name: _neutral(f) for f in action_spec}  # in the announced order
        steer, throttle, brake = (self._bounds[n] for n in DRIVEN_FIELDS)
        if mode == "2d":
            low, high = [steer[0], -brake[1]], [steer[1], throttle[1]]
        else:
            low, high = [steer[0], throttle[0], brake[0]], [steer[1], throttle[1], brake[1]]
        self.space = spaces.Box(np.array(low, np.float32), np.array(high, np.float32),
                                dtype=np.float32)
        # The hot path (every env step) works on Python floats: for 2-3 values that is several
        # times cheaper than numpy's per-call overhead, with the same float64 arithmetic.
        self._low, self._high = self.space.low.tolist(), self.space.high.tolist()
        self._driven_bounds = tuple(self._bounds[n] for n in DRIVEN_FIELDS)

    def control(self, action: Any) -> dict[str, Any]:
        """Checks ``action`` and returns the full control map (Python scalars, every announced field).

        Raises:
            ValueError: wrong shape, NaN/inf, or out of range with ``out_of_range="raise"``.
        """
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != self.space.shape:
            raise ValueError(f"action must have shape {self.space.shape}, got {np.shape(action)}")
        values = a.tolist()
        if not all(map(math.isfinite, values)):
            raise ValueError(f"action contains NaN or infinity: {action!r}")
        low, high = self._low, self._high
        clipped = [min(max(v, lo), hi) for v, lo, hi in zip(values, low, high)]
        if clipped != values:
            if self.out_of_range == "raise":
                raise ValueError(f"action {values} is outside [{low}, {high}]")
            values = clipped
        if self.mode == "2d":
            driven = (values[0], max(values[1], 0.0), max(-values[1], 0.0))
        else:
            driven = values
        control = self._neutral.copy()
        # bounds: float32 space bounds may overshoot the announced ones by an ulp
        for name, value, (lo, hi) in zip(DRIVEN_FIELDS, driven, self._driven_bounds):
            control[name] = min(max(value, lo), hi)
        return control


def _neutral(field: FieldSpec) -> Any:
    """False for a boolean field; otherwise 0 moved into the field's bounds."""
    if field.dtype == "bool":
        return False
    value = 0.0 if field.dtype.startswith("float") else 0
    if field.low is not None and value < field.low:
        value = type(value)(field.low)
    if field.high is not None and value > field.high:
        value = type(value)(field.high)
    return value
