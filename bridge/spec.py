"""Field specifications: what the sim side announces in the handshake and both sides validate against.

A spec is plain data (name, dtype, shape, bounds) so it crosses the wire as a msgpack map and can be
rebuilt into Gymnasium spaces on the trainer side without importing anything from the sim side.
"""
import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from bridge.errors import SpecError, quote

#: dtypes allowed in specs and on the wire: booleans, integers and floats only (never objects).
ALLOWED_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
)
_FLOAT_DTYPES = ("float16", "float32", "float64")


class FieldSpec(NamedTuple):
    """One named field: an array of ``dtype`` and ``shape`` whose values lie in ``[low, high]``.

    A dimension of ``-1`` means "variable length" (a LiDAR point cloud, say). Scalars have shape ``()``.
    ``low``/``high`` are scalars applied to every element; ``None`` means unbounded for floats and the
    dtype's range for integers.
    """

    name: str
    dtype: str
    shape: Tuple[int, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    doc: str = ""

    def to_wire(self) -> Dict[str, Any]:
        """Returns the msgpack-ready map documented in docs/PROTOCOL.md."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "low": self.low,
            "high": self.high,
            "doc": self.doc,
        }

    @classmethod
    def from_wire(cls, data: Dict[str, Any]) -> "FieldSpec":
        """Builds a spec from its wire map.

        Raises:
            SpecError: a key is missing, the dtype is not allowed or the shape is malformed.
        """
        try:
            spec = cls(
                name=str(data["name"]),
                dtype=str(data["dtype"]),
                shape=tuple(int(d) for d in data["shape"]),
                low=None if data.get("low") is None else float(data["low"]),
                high=None if data.get("high") is None else float(data["high"]),
                doc=str(data.get("doc", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError("malformed field spec {}: {}".format(quote(data), e)) from e
        spec.check()
        return spec

    def check(self) -> None:
        """Raises SpecError if this spec itself is invalid."""
        if self.dtype not in ALLOWED_DTYPES:
            raise SpecError("field {!r}: dtype {!r} is not one of {}".format(
                self.name, self.dtype, ", ".join(ALLOWED_DTYPES)))
        if any(d < -1 for d in self.shape):
            raise SpecError("field {!r}: bad shape {}".format(self.name, self.shape))

    def validate(self, value: Any) -> np.ndarray:
        """Checks ``value`` against this spec and returns it as an ndarray of the spec's dtype.

        Raises:
            SpecError: wrong shape, non-finite float, value out of bounds or not convertible.
        """
        if not self.shape and type(value) in (float, int, bool):
            return self._validate_python_scalar(value)
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as e:
            raise SpecError("field {!r}: cannot convert {}: {}".format(
                self.name, quote(value), e)) from e
        if array.dtype.kind not in "biuf":
            raise SpecError("field {!r}: expected {} but got dtype {}".format(
                self.name, self.dtype, array.dtype))
        if array.ndim != len(self.shape) or any(
                want not in (-1, got) for want, got in zip(self.shape, array.shape)):
            raise SpecError("field {!r}: expected shape {} but got {}".format(
                self.name, self.shape, array.shape))
        wanted_kind = np.dtype(self.dtype).kind
        if wanted_kind == "b" and array.dtype.kind != "b" and not (
                array.dtype.kind in "iu" and np.all((array == 0) | (array == 1))):
            raise SpecError("field {!r}: expected a boolean but got {}".format(
                self.name, quote(value)))
        if wanted_kind in "iu" and array.dtype.kind == "f" and not np.all(array == np.round(array)):
            raise SpecError("field {!r}: expected an integer but got {}".format(
                self.name, quote(value)))
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise SpecError("field {!r}: contains NaN or infinity: {}".format(
                self.name, quote(value)))
        if array.size and self.low is not None and np.min(array) < self.low:
            raise SpecError("field {!r}: {} is below its lower bound {}".format(
                self.name, quote(value), self.low))
        if array.size and self.high is not None and np.max(array) > self.high:
            raise SpecError("field {!r}: {} is above its upper bound {}".format(
                self.name, quote(value), self.high))
        return array.astype(self.dtype, copy=False)

    def _validate_python_scalar(self, value: Any) -> np.ndarray:
        """The common case of an action field, checked in plain Python (numpy calls cost ~10x)."""
        if type(value) is float and not math.isfinite(value):
            raise SpecError("field {!r}: contains NaN or infinity: {}".format(
                self.name, quote(value)))
        if type(value) is float and self.dtype not in _FLOAT_DTYPES:
            return self.validate(np.float64(value))  # let the general path explain the mismatch
        if self.low is not None and value < self.low:
            raise SpecError("field {!r}: {} is below its lower bound {}".format(
                self.name, quote(value), self.low))
        if self.high is not None and value > self.high:
            raise SpecError("field {!r}: {} is above its upper bound {}".format(
                self.name, quote(value), self.high))
        try:
            return np.array(value, dtype=self.dtype)
        except OverflowError as e:  # a Python int beyond the dtype's range (no bounds set)
            raise SpecError("field {!r}: {} does not fit {}".format(
                self.name, quote(value), self.dtype)) from e


class WorldSpec(NamedTuple):
    """Everything the trainer needs to build its spaces: sent in the ``hello`` reply."""

    observation: Tuple[FieldSpec, ...]
    measurements: Tuple[FieldSpec, ...]
    action: Tuple[FieldSpec, ...]
    tick_seconds: float

    def to_wire(self) -> Dict[str, Any]:
        return {
            "observation": [f.to_wire() for f in self.observation],
            "measurements": [f.to_wire() for f in self.measurements],
            "action": [f.to_wire() for f in self.action],
            "tick_seconds": self.tick_seconds,
        }

    @classmethod
    def from_wire(cls, data: Dict[str, Any]) -> "WorldSpec":
        """Raises SpecError on a malformed map."""
        try:
            tick = float(data["tick_seconds"])
            groups = [tuple(FieldSpec.from_wire(f) for f in data[key])
                      for key in ("observation", "measurements", "action")]
        except (KeyError, TypeError) as e:
            raise SpecError("malformed world spec: {}".format(e)) from e
        if not (math.isfinite(tick) and tick > 0):
            raise SpecError("tick_seconds must be a positive number, got {!r}".format(tick))
        return cls(groups[0], groups[1], groups[2], tick)


def validate_fields(specs: Sequence[FieldSpec], values: Dict[str, Any], what: str
                    ) -> Dict[str, np.ndarray]:
    """Validates a map of values against specs: every field present, no unknown field.

    Raises:
        SpecError: a field is missing, unknown or invalid; the message names ``what`` ("action", ...).
    """
    if not isinstance(values, dict):
        raise SpecError("{} must be a map of field name to value, got {}".format(
            what, type(values).__name__))
    if len(values) == len(specs) and all(s.name in values for s in specs):
        return {s.name: s.validate(values[s.name]) for s in specs}  # exactly the known fields
    known = {s.name for s in specs}
    unknown = sorted(set(map(str, values)) - known)
    if unknown:
        raise SpecError("{}: unknown field(s) {}; expected {}".format(what, quote(unknown),
                                                                  sorted(known)))
    missing = sorted(known - set(values))
    if missing:
        raise SpecError("{}: missing field(s) {}".format(what, missing))
    return {s.name: s.validate(values[s.name]) for s in specs}


def field_names(specs: Sequence[FieldSpec]) -> List[str]:
    return [s.name for s in specs]


class Tick(NamedTuple):
    """What one simulation tick produced: what a world backend returns and a reset/step reply carries.

    On the trainer's side (``bridge.client.StepReply`` is this class) arrays are read-only views of
    receive buffers or of shared memory. Views of shared memory stay valid until the client sends the
    request after next (the server then rewrites their slot); construct the client with
    ``copy_arrays=True`` to get private copies.

    Attributes:
        frame: the simulator's frame id (CARLA's ``world.tick()`` return value); +1 per tick.
        sim_time: simulation time in seconds since the world started (``snapshot.timestamp``).
        observation: sensor name -> array, matching the spec's ``observation`` fields.
        measurements: name -> scalar or small array, matching the spec's ``measurements`` fields.
        events: this tick's events, e.g. ``{"type": "collision", "frame": 12, "other": "vehicle",
            "intensity": 3.1}`` or ``{"type": "lane_invasion", "frame": 12, "markings": ["Solid"]}``.
    """

    frame: int
    sim_time: float
    observation: Dict[str, np.ndarray]
    measurements: Dict[str, Any]
    events: List[Dict[str, Any]]
