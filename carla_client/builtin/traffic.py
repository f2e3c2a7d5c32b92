"""NPC vehicles: cars that follow their lane's centre line at a cruising speed, keeping distance.

Each NPC lives in one lane (0: the ego's lane, same direction; 1: the opposite lane) at an arc
length ``sigma`` along that lane's driving order. Every tick it drives at its cruising speed unless
the next vehicle ahead in its lane, NPC or ego, is closer than a safe gap; then it slows (down to a
stop) so that it never runs into anyone. Collisions only happen when the ego drives into an NPC.
"""
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from bridge.errors import SpecError
from carla_client.builtin.road import Track

#: centre-to-centre distance at which a follower stops (car length + 3.4 m).
MIN_GAP = 8.0
#: time headway of the car-following rule, seconds.
HEADWAY = 1.0
#: acceleration of NPCs pulling away, m/s^2.
NPC_ACCEL = 2.0
#: spawn rules: distance between NPCs in a lane, and from the ego in either lane.
SPAWN_GAP = 20.0
SPAWN_CLEAR_OF_EGO = 30.0


class Traffic(object):
    """The NPC vehicles of one world.

    Args:
        track: the circuit.
        count: number of NPCs (alternating lanes).
        speed_range: cruising speeds are drawn uniformly from this range, m/s.

    Raises:
        SpecError: more NPCs than the circuit has room for.
    """

    def __init__(self, track: Track, count: int, speed_range: Tuple[float, float] = (5.0, 8.0)
                 ) -> None:
        room = 2 * int(track.length / (2.0 * SPAWN_GAP)) - 4
        if count < 0 or count > room:
            raise SpecError("npc_vehicles must be between 0 and {} on this {:.0f} m circuit, got "
                            "{}".format(room, track.length, count))
        self.track = track
        self.count = count
        self.speed_range = speed_range
        self.lanes = (track.route, track.left)
        self.lane = np.arange(count) % 2
        self.lengths = np.array([self.lanes[k].length for k in self.lane])
        self.sigma = np.zeros(count)
        self.previous = np.zeros(count)
        self.speed = np.zeros(count)
        self.cruise = np.zeros(count)
        self.colour = np.arange(count)
        self._members = [np.flatnonzero(self.lane == k) for k in range(len(self.lanes))]
        self._poses = (np.zeros(count), np.zeros(count), np.zeros(count))

    def reset(self, rng: np.random.RandomState, ego: Sequence[Tuple[int, float]]) -> None:
        """Places the NPCs at random, clear of each other and of the ego's lane positions ``ego``
        ((lane, sigma) pairs for both lanes)."""
        if not self.count:
            return
        taken = [(lane, sigma, SPAWN_CLEAR_OF_EGO) for lane, sigma in ego]
        for i in range(self.count):
            lane, length = int(self.lane[i]), self.lengths[i]
            for _ in range(10000):
                sigma = rng.uniform(0.0, length)
                if _clear(sigma, lane, length, taken):
                    break
            else:  # unreachable within the capacity check, but never loop forever
                raise SpecError("cannot place {} NPC vehicles on this circuit".format(self.count))
            taken.append((lane, sigma, SPAWN_GAP))
            self.sigma[i] = sigma
        self.previous[:] = self.sigma
        self.cruise[:] = rng.uniform(self.speed_range[0], self.speed_range[1], size=self.count)
        self.speed[:] = self.cruise
        self.colour[:] = rng.randint(0, 1000, size=self.count)
        self._update_poses()

    def step(self, dt: float, ego: Sequence[Tuple[int, float]]) -> None:
        """Moves every NPC one tick; ``ego`` lists the (lane, sigma) the ego occupies (0-2)."""
        if not self.count:
            return
        self.previous[:] = self.sigma
        others_sigma = np.concatenate((self.sigma, [s for _, s in ego]))
        others_lane = np.concatenate((self.lane, [k for k, _ in ego]))
        gap = np.mod(others_sigma[None, :] - self.sigma[:, None], self.lengths[:, None])
        gap[others_lane[None, :] != self.lane[:, None]] = np.inf
        gap[np.arange(self.count), np.arange(self.count)] = np.inf
        lead = gap.min(axis=1)
        safe = np.clip((lead - MIN_GAP) / HEADWAY, 0.0, self.cruise)
        self.speed = np.minimum(safe, self.speed + NPC_ACCEL * dt)
        self.sigma = np.mod(self.sigma + self.speed * dt, self.lengths)
        self._update_poses()

    def get_state(self) -> Dict[str, Any]:
        """Copies of everything that changes while NPCs drive (for world snapshots)."""
        return {"sigma": self.sigma.copy(), "previous": self.previous.copy(),
                "speed": self.speed.copy(), "cruise": self.cruise.copy(),
                "colour": self.colour.copy()}

    def set_state(self, state: Dict[str, Any]) -> None:
        """Puts back a ``get_state`` result (copied, so the saved one stays unchanged)."""
        for key in ("sigma", "previous", "speed", "cruise", "colour"):
            setattr(self, key, np.array(state[key], copy=True))
        self._update_poses()

    def hold(self, i: int) -> None:
        """Undoes NPC ``i``'s last move and stops it (it was hit by the ego)."""
        self.sigma[i] = self.previous[i]
        self.speed[i] = 0.0
        self._update_poses()

    def lead(self, lane: int, sigma: float, forward: bool, ego_speed: float, car_length: float,
             max_range: float) -> Tuple[float, float]:
        """(distance, closing speed) to the nearest NPC ahead of the ego in ``lane``.

        Args:
            lane: the lane the ego is in (0: its own, 1: the opposite one).
            sigma: the ego's arc length along that lane, in the lane's driving order.
            forward: True when the ego drives in that lane's driving order, False when against it.
            ego_speed: the ego's speed along its direction of travel, m/s.
            car_length: bumper-to-bumper correction (every car has the ego's body).
            max_range: beyond it (or with no NPC in the lane) the answer is (max_range, 0.0).

        Returns:
            the bumper-to-bumper gap in metres along the lane (0 when overlapping) and the ego's
            speed minus the lead's speed along the ego's direction (positive: closing in).
        """
        members = self._members[lane] if lane < len(self._members) else ()
        if not len(members):
            return max_range, 0.0
        length = self.lanes[lane].length
        ahead = self.sigma[members] - sigma if forward else sigma - self.sigma[members]
        gaps = np.mod(ahead, length)
        k = int(np.argmin(gaps))
        distance = float(gaps[k]) - car_length
        if distance > max_range:
            return max_range, 0.0
        lead_speed = float(self.speed[members[k]])
        return max(distance, 0.0), ego_speed - (lead_speed if forward else -lead_speed)

    def poses(self) -> List[Tuple[float, float, float, int]]:
        """(x, y, yaw, colour index) of every NPC."""
        x, y, yaw = self.poses_arrays()
        return [(float(x[i]), float(y[i]), float(yaw[i]), int(self.colour[i]))
                for i in range(self.count)]

    def poses_arrays(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x, y, yaw arrays of every NPC (computed once per move; do not modify)."""
        return self._poses

    def _update_poses(self) -> None:
        x, y, yaw = np.zeros(self.count), np.zeros(self.count), np.zeros(self.count)
        for lane, members in zip(self.lanes, self._members):
            if len(members):
                x[members], y[members], yaw[members] = lane.pose_at(self.sigma[members])
        self._poses = (x, y, yaw)


def _clear(sigma: float, lane: int, length: float, taken: Sequence[Tuple[int, float, float]]
           ) -> bool:
    """True when ``sigma`` in ``lane`` is at least the given gap from every taken position there."""
    for other_lane, other, gap in taken:
        if other_lane == lane:
            d = abs(sigma - other) % length
            if min(d, length - d) < gap:
                return False
    return True
