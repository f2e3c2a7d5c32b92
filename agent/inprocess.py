"""A client with BridgeClient's surface that steps a WorldBackend in this process (no sockets).

Used for the benchmark baseline (``python -m agent.bench``) and for quick experiments: an env whose
endpoint is ``inprocess://builtin`` (optionally ``?sensors=FILE.json&seed=N``) runs the built-in world
inside the env's own process.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from bridge import protocol
from bridge.client import RoundTripStats, ServerInfo, StepReply
from bridge.errors import BridgeError, SessionError, SnapshotUnsupportedError
from bridge.schema import VehicleControl
from bridge.snapshots import SnapshotStore
from bridge.spec import validate_fields
from carla_client.backend import WorldBackend

SCHEME = "inprocess://"


class InProcessClient:
    """Calls a WorldBackend directly; validates actions like the server does.

    Args:
        backend: the world; this client owns it and closes it in ``close()``.
        max_snapshots: snapshot tokens kept per session, as the server's ``max_snapshots``.
    """

    def __init__(self, backend: WorldBackend,
                 max_snapshots: int = protocol.DEFAULT_MAX_SNAPSHOTS) -> None:
        self.backend = backend
        self.max_snapshots = int(max_snapshots)
        self._snapshots = SnapshotStore(self.max_snapshots, "this in-process session")
        self.stats = RoundTripStats()  # the same statistics a BridgeClient keeps
        self._spec = backend.spec()
        self._session: str | None = None
        self._pending: Callable[[], StepReply] | None = None
        self.info: ServerInfo | None = None
        self._closed = False

    def hello(self) -> ServerInfo:
        self.backend.stop()  # a new hello replaces any earlier session, as on the server
        self.backend.start()
        self._session = uuid.uuid4().hex
        self._snapshots.clear()  # tokens die with their session
        can_snapshot = bool(self.backend.supports_snapshot)
        self.info = ServerInfo("inprocess", self.backend.name, self.backend.version, self._spec,
                               self._session, False, can_snapshot,
                               self.max_snapshots if can_snapshot else 0,
                               bool(self.backend.deterministic), self.backend.settings())
        return self.info

    def _tick(self, command: str, call, *args) -> StepReply:
        if self._session is None:
            raise SessionError("no session: call hello() first")
        start = time.perf_counter()
        tick = call(*args)
        self.stats.record(command, time.perf_counter() - start)
        return tick  # a backend's Tick is what BridgeClient returns as a StepReply

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> StepReply:
        return self._tick(protocol.RESET, self.backend.reset, seed, dict(options or {}))

    def step(self, action: dict[str, Any]) -> StepReply:
        """Raises: SpecError if the action breaks VEHICLE_CONTROL_SPEC (as RemoteSpecError would)."""
        fields = validate_fields(self._spec.action, action, "action")
        return self._tick(protocol.STEP, self.backend.step, VehicleControl.from_fields(fields))

    # The send-now/receive-later split of BridgeClient (agent.vec.BridgeVecEnv drives many clients
    # this way). There is nothing to wait for here: the world runs when the tick is received.
    wait_sockets: tuple = ()

    def send_reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        self._send(lambda: self.reset(seed, options))

    def send_step(self, action: dict[str, Any]) -> None:
        self._send(lambda: self.step(action))

    def recv_tick(self, block: bool = True) -> StepReply:
        """Runs the request sent last and returns its tick (errors surface here, as over the wire)."""
        call, self._pending = self._pending, None
        if call is None:
            raise BridgeError("recv_tick() without a step or reset in flight")
        return call()

    @property
    def in_flight(self) -> bool:
        return self._pending is not None

    def _send(self, call: Callable[[], StepReply]) -> None:
        if self._pending is not None:
            raise BridgeError("a step or reset is still in flight: receive its tick first")
        self._pending = call
    def snapshot(self) -> str:
        """Raises: SnapshotUnsupportedError, SnapshotError (as BridgeClient.snapshot)."""
        self._check_can_snapshot()
        return self._snapshots.add(self.backend.snapshot())

    def restore(self, token: str) -> StepReply:
        """Raises: SnapshotUnsupportedError, SnapshotError (as BridgeClient.restore)."""
        self._check_can_snapshot()
        return self._tick(protocol.RESTORE, self.backend.restore, self._snapshots.get(token))

    def _check_can_snapshot(self) -> None:
        if self._session is None:
            raise SessionError("no session: call hello() first")
        if not self.backend.supports_snapshot:
            raise SnapshotUnsupportedError(f"the {self.backend.name} world cannot save and restore "
                                           "its full state, so it refuses to snapshot")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending = None
        self._session = None
        self._snapshots.clear()
        self.backend.close()

    def __enter__(self) -> "InProcessClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def world_from_endpoint(endpoint: str) -> WorldBackend:
    """Builds the world named by ``inprocess://builtin[?sensors=FILE&seed=N&tick=S&npc=K&circuits=C]``.

    ``inprocess://ring`` is agent.testing.RingWorld, a test double.

    Raises:
        ValueError: not an inprocess endpoint, or an unknown world.
    """
    url = urlparse(endpoint)
    if url.scheme != "inprocess" or url.netloc not in ("builtin", "ring"):
        raise ValueError(f"{endpoint!r}: in process, the worlds are inprocess://builtin and "
                         "inprocess://ring")
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    if url.netloc == "ring":
        from agent.testing import RingWorld

        return RingWorld(tick_seconds=float(query.get("tick", 0.05)))
    # imported here so the trainer only needs the built-in world when it runs one in process
    from carla_client.builtin import BuiltinWorld
    from carla_client.sensors import load_sensors

    return BuiltinWorld(sensors=load_sensors(query.get("sensors")),
                        tick_seconds=float(query.get("tick", 0.05)),
                        seed=int(query.get("seed", 0)), npc_vehicles=int(query.get("npc", 0)),
                        circuits=int(query.get("circuits", 1)))


def is_inprocess(endpoint: str) -> bool:
    return endpoint.startswith(SCHEME)


def make_client(endpoint: str, timeout: float = 10.0, use_shm: bool = True) -> Any:
    """A BridgeClient for tcp:// or ipc:// endpoints, an InProcessClient for inprocess:// ones."""
    if is_inprocess(endpoint):
        return InProcessClient(world_from_endpoint(endpoint))
    from bridge.client import BridgeClient

    return BridgeClient(endpoint=endpoint, timeout=timeout, use_shm=use_shm)
