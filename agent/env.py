"""CarlaBridgeEnv: a Gymnasium env that drives the sim side's world through the bridge client."""
from __future__ import annotations

import copy
import importlib
import json
import logging
import math
import threading
import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agent.action import ActionMapping
from agent.observation import LEAD_MEASUREMENTS, StateEncoder, find_camera, to_rgb
from agent.reward import TERMS, RewardConfig, compute_reward, count_events
from bridge.client import BridgeClient
from bridge.errors import (EPISODE_ENDING_REMOTE_ERRORS, BridgeTimeoutError, PeerDisconnectedError,
                           RemoteError, SessionBusyError, SessionError, SnapshotError, SpecError)

log = logging.getLogger(__name__)

#: endpoint schemes served by a plug-in client instead of BridgeClient, as "module:function"
#: (gymnasium's entry-point style), imported on first use: the in-process worlds need the sim
#: package, and importing the env must never import it.
CLIENT_PLUGINS = {"inprocess": "agent.inprocess:make_client"}


def make_client(endpoint: str, timeout: float = 10.0, use_shm: bool = True,
                curve: str | None = None) -> Any:
    """A BridgeClient for tcp:// and ipc:// endpoints; the plug-in's client for CLIENT_PLUGINS' schemes."""
    plugin = CLIENT_PLUGINS.get(endpoint.partition("://")[0])
    if plugin is not None:
        module, _, function = plugin.partition(":")
        return getattr(importlib.import_module(module), function)(endpoint, timeout=timeout,
                                                                   use_shm=use_shm)
    return BridgeClient(endpoint=endpoint, timeout=timeout, use_shm=use_shm, curve=curve)

#: bridge failures after which a reconnect may help (the sim side restarted or hung). A timeout
#: reported *by* the sim side (RemoteTimeoutError) is not one of them: the session is fine.
RECONNECTABLE = (BridgeTimeoutError, PeerDisconnectedError, SessionError)
#: info keys of the reward terms, made once (end_step runs every env step).
_REWARD_KEYS = {t: f"reward_{t}" for t in TERMS}
#: resets tried when the sim side reports it could not finish one (EPISODE_ENDING_REMOTE_ERRORS).
RESET_ATTEMPTS = 3

#: the env's own per-episode state that a snapshot saves next to the sim's. A new attribute that
#: changes during an episode belongs here (tests/test_branch.py fails when a restore misses one).
_SNAPSHOT_ATTRIBUTES = ("_measurements", "_encoder", "_last_obs", "_last_frame", "_episode",
                        "_steps", "_last_completion", "_start_frame", "_start_time", "sim_frame",
                        "_np_random")


def current_endpoint(path: str, first: str) -> str | None:
    """Where the sim first reached at ``first`` answers now, per the endpoints file at ``path``;
    None when the file is missing, being replaced or does not name it (the old endpoint stays)."""
    try:
        with open(path, encoding="utf-8") as f:
            moved = json.load(f).get("endpoints", {}).get(first)
    except (OSError, ValueError, AttributeError) as e:
        log.debug("endpoints file %s unreadable: %s", path, e)
        return None
    return moved if isinstance(moved, str) else None


class EnvSnapshot:
    """An opaque token from ``CarlaBridgeEnv.snapshot()``: the sim's token plus the env's own state.

    Valid for the env (and sim session) that took it; the sim keeps a bounded number of them.
    """

    __slots__ = ("sim_token", "_env_state")

    def __init__(self, sim_token: str, env_state: dict[str, Any]) -> None:
        self.sim_token = sim_token
        self._env_state = env_state

    @property
    def frame(self) -> int:
        """The sim's frame id when the snapshot was taken."""
        return int(self._env_state["sim_frame"])

    def __repr__(self) -> str:
        return f"EnvSnapshot({self.sim_token!r}, frame={self.frame})"


class CarlaBridgeEnv(gym.Env):
    """Drives the ego vehicle of a world served by ``carla_client`` (or run in process).

    Spaces are built from the spec the sim announces in its ``hello`` reply.

    Observation space: ``Dict`` with
        - ``camera``: ``Box(0, 255, (H, W, 3), uint8)``, RGB converted from the sim's BGRA camera and
          resized to ``camera_size`` (64x64 by default) when the sim's differs. Absent when
          ``camera=None`` or when the sim announces no colour camera.
        - ``vehicle_state``: ``Box(-1, 1, (n,), float32)``, the features of
          ``agent.observation.STATE_FEATURES`` (speed, speed error, lateral offset, sin/cos heading
          error, lateral velocity, heading-error rate, lane curvature, previous steer and pedal),
          each scaled and clipped to [-1, 1]; with ``lead_vehicle=True`` followed by those of
          ``LEAD_FEATURES`` (gap, closing speed and inverse time to collision to the vehicle ahead
          in the ego's lane).

    Action space, from the bounds of the sim's announced ``steer``/``throttle``/``brake`` fields
    (agent.action.ActionMapping; CARLA's ranges give these):
        - ``action_mode="2d"`` (default): ``Box([-1, -1], [1, 1])`` = (steer, pedal); a positive pedal
          is throttle, a negative one brake.
        - ``action_mode="3d"``: ``Box([-1, 0, 0], [1, 1, 1])`` = (steer, throttle, brake).
        Other announced control fields are sent at their neutral value (``hand_brake``/``reverse``
        False). NaN or infinite actions raise ``ValueError``; out-of-range ones are clipped
        (``out_of_range="clip"``) or raise ``ValueError`` (``"raise"``).

    Episodes terminate on a collision or when the car is off the road, and are truncated after
    ``max_episode_steps`` steps, when ``route_completion`` reaches ``lap_target`` (if
    ``end_on_lap``), after a bridge reconnect, or when the sim side could not finish the step but
    kept the session (its step budget ran out waiting for a CARLA tick or sensor, or another client
    destroyed the ego: ``info["sim_error"]`` says which; the next ``reset`` works as usual).
    ``info["late_events"]`` counts events reported after their own frame's step (CARLA delivers
    events on its own threads). ``info`` holds ``frame`` and ``sim_time`` counted
    from the episode's reset (the sim's absolute frame id and time are in the reset's info as
    ``sim_frame``/``sim_start_time`` and in ``env.sim_frame``; relative values keep step infos
    reproducible, as gymnasium's checker demands), every ``reward_<term>`` of agent.reward.TERMS,
    the applied control and, at the end of an episode, ``episode_metrics``.

    Args:
        endpoint: ``tcp://host:port`` / ``ipc://path`` of a running ``carla_client``, or
            ``inprocess://builtin[?sensors=FILE&seed=N]`` to run the built-in world in this process.
        timeout: seconds to wait for each reply.
        use_shm: negotiate the shared-memory path for large arrays when both sides are on one host.
        camera: the observation field to use as the camera, ``"auto"`` (first colour camera) or None.
        camera_size: (height, width) of the camera observation, or None to keep the sim's.
        action_mode: ``"2d"`` or ``"3d"``.
        out_of_range: ``"clip"`` or ``"raise"``.
        max_episode_steps: truncation limit.
        end_on_lap: truncate when a lap is completed (the evaluation's success criterion).
        lap_target: the ``route_completion`` that counts as a completed lap.
        terminate_on_collision / terminate_on_off_road: episode ends on these.
        reward: RewardConfig or mapping of its fields (weights, target speed...).
        reconnect: on a timeout, disconnect or lost session during a step, connect again (new hello)
            and end the episode as truncated with ``info["bridge_reconnected"] = True``. Never when
            another trainer owns the sim side: that raises SessionBusyError at once.
        reconnect_timeout: seconds to keep trying to reconnect before giving up.
        reset_options: options passed to the sim's reset.
        lead_vehicle: add the vehicle-ahead features to ``vehicle_state`` (the sim must announce the
            ``lead_distance`` and ``lead_closing_speed`` measurements).
        render_mode: None or ``"rgb_array"`` (the last frame of the sim's first colour camera, at
            its resolution, whether or not the policy sees a camera).
        client_factory: builds the client (tests); defaults to ``make_client(endpoint, ...)``.
        curve: a CurveZMQ key directory (``python -m bridge.keys DIR``) for a sim side started with
            ``--curve``: its ``server.key`` and ``client.key_secret`` are used.
        endpoints_file: a JSON file ``{"endpoints": {first endpoint: current endpoint}}`` that says
            where a sim that moved answers now (``launch up cluster=ray cluster.bind=node`` writes
            it when Ray restarts a sim on another node); read before each reconnect attempt.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5556", *, timeout: float = 10.0,
                 use_shm: bool = True, camera: str | None = "auto",
                 camera_size: tuple[int, int] | list[int] | None = (64, 64),
                 action_mode: str = "2d", out_of_range: str = "clip",
                 max_episode_steps: int = 3000, end_on_lap: bool = True, lap_target: float = 1.0,
                 terminate_on_collision: bool = True, terminate_on_off_road: bool = True,
                 reward: RewardConfig | dict[str, Any] | None = None,
                 reconnect: bool = False, reconnect_timeout: float = 60.0,
                 reset_options: dict[str, Any] | None = None, lead_vehicle: bool = False,
                 render_mode: str | None = None,
                 client_factory: Callable[[], Any] | None = None, curve: str | None = None,
                 endpoints_file: str | None = None) -> None:
        if action_mode not in ("2d", "3d"):  # checked again by ActionMapping, but before connecting
            raise ValueError(f"action_mode must be '2d' or '3d', got {action_mode!r}")
        if out_of_range not in ("clip", "raise"):
            raise ValueError(f"out_of_range must be 'clip' or 'raise', got {out_of_range!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if max_episode_steps < 1:
            raise ValueError("max_episode_steps must be at least 1")
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.action_mode = action_mode
        self.out_of_range = out_of_range
        self.max_episode_steps = int(max_episode_steps)
        self.end_on_lap = end_on_lap
        self.lap_target = float(lap_target)
        self.terminate_on_collision = terminate_on_collision
        self.terminate_on_off_road = terminate_on_off_road
        self.reward_config = (reward if isinstance(reward, RewardConfig)
                              else RewardConfig.from_dict(reward))
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.reset_options = dict(reset_options or {})
        self.render_mode = render_mode
        self.first_endpoint = endpoint
        self.endpoints_file = endpoints_file
        self._client_factory = client_factory or (  # self.endpoint: a moved sim's new address
            lambda: make_client(self.endpoint, timeout=timeout, use_shm=use_shm, curve=curve))
        self._client: Any = None
        self._closed = False

        self.server_info = self._connect()
        spec = self.server_info.spec
        try:
            self._actions = ActionMapping(spec.action, action_mode, out_of_range)
        except SpecError:
            self.close()
            raise
        self.tick_seconds = spec.tick_seconds
        self._camera = find_camera(spec.observation, camera)
        self._render_camera = self._camera or find_camera(spec.observation, "auto")
        self._camera_size = None if camera_size is None else (int(camera_size[0]), int(camera_size[1]))
        if lead_vehicle:
            missing = [n for n in LEAD_MEASUREMENTS if n not in {f.name for f in spec.measurements}]
            if missing:
                self.close()
                raise SpecError(f"lead_vehicle=True, but the sim at {endpoint} does not report "
                                f"{missing} (an older carla_client?): update it, or set "
                                "env.lead_vehicle=false")
        self._encoder = StateEncoder(spec.tick_seconds, self.reward_config.target_speed,
                                     self.reward_config.lane_half_width, lead_vehicle)
        obs_spaces: dict[str, spaces.Space] = {}
        if self._camera is not None:
            h, w = self._camera_size or self._camera.shape[:2]
            obs_spaces["camera"] = spaces.Box(0, 255, (h, w, 3), np.uint8)
        obs_spaces["vehicle_state"] = self._encoder.space
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = self._actions.space

        self._measurements: dict[str, Any] | None = None
        self._last_obs: dict[str, np.ndarray] | None = None
        self._last_frame: np.ndarray | None = None
        self._episode: dict[str, float] = {}
        self._steps = 0
        self._last_completion = 0.0

    # ---------------------------------------------------------------- connection
    def _connect(self) -> Any:
        self._client = self._client_factory()
        try:
            return self._client.hello()
        except SessionBusyError as e:  # two trainers on one sim side: a configuration problem
            self._client.close()
            self._client = None
            raise SessionBusyError(
                f"another trainer is using {self.endpoint}: stop it, or give this trainer its own "
                f"carla_client (another --bind port, and env.endpoint here). The sim side said: {e}"
            ) from e
        except BaseException:
            self._client.close()
            self._client = None
            raise

    def _reconnect(self, cause: BaseException, cancelled: threading.Event | None = None) -> None:
        """Replaces the client by a new one with a fresh session, retrying until the deadline.

        Args:
            cause: the failure that made the old client useless.
            cancelled: stops the retries early (agent.vec.BridgeVecEnv reconnects in a thread).

        Raises:
            the last connection error, chained to ``cause``, when the deadline passes or
            ``cancelled`` is set; SpecError if the sim came back with another spec.
        """
        log.warning("bridge to %s failed (%s: %s); reconnecting", self.endpoint,
                    type(cause).__name__, cause)
        old, self._client = self._client, None
        if old is not None:
            old.close()
        cancelled = cancelled or threading.Event()
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            self._follow_endpoint()
            try:
                info = self._connect()
            except SessionBusyError:
                raise  # reconnecting again would only fight the other trainer for the sim side
            except (ConnectionError, *RECONNECTABLE) as e:
                if time.monotonic() >= deadline or cancelled.is_set():
                    raise e from cause
                cancelled.wait(0.5)  # the sim is restarting; the connect itself waits on the socket
                continue
            if info.spec != self.server_info.spec:
                raise SpecError(f"the sim at {self.endpoint} came back with a different spec; "
                                "the env's spaces no longer match it") from cause
            self.server_info = info
            return

    def _follow_endpoint(self) -> None:
        """Takes the sim's current endpoint from ``endpoints_file``, if it names one."""
        if self.endpoints_file is None:
            return
        moved = current_endpoint(self.endpoints_file, self.first_endpoint)
        if moved and moved != self.endpoint:
            log.warning("the sim of %s moved to %s (%s): reconnecting there", self.first_endpoint,
                        moved, self.endpoints_file)
            self.endpoint = moved

    @property
    def client(self) -> Any:
        return self._client

    @property
    def measurements(self) -> dict[str, Any] | None:
        """The sim's raw measurements of the last tick (None before the first reset); recorded
        datasets keep them so that a replay can compare them byte for byte."""
        return self._measurements

    def bridge_stats(self) -> tuple[float, float, float]:
        """(round trip p50 seconds, p99 seconds, sim ticks per second) over recent requests."""
        if self._client is None:
            return (math.nan, math.nan, math.nan)
        p50, p99 = self._client.stats.percentiles()
        return (float(p50), float(p99), float(self._client.stats.ticks_per_second()))

    # ---------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        sim_seed, sim_options = self.begin_reset(seed=seed, options=options)
        try:
            reply = self._reset_sim(sim_seed, sim_options)
        except RECONNECTABLE as e:
            if not self.reconnect or isinstance(e, RemoteError):
                raise
            self._reconnect(e)
            reply = self._reset_sim(sim_seed, sim_options)
        return self.end_reset(reply)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        control = self.begin_step(action)
        try:
            reply = self._client.step(control)
        except EPISODE_ENDING_REMOTE_ERRORS as e:
            return self.end_episode_on_sim_error(e)
        except RECONNECTABLE as e:
            if not self.reconnect:
                raise
            self._reconnect(e)
            return self.interrupt_episode({"bridge_reconnected": True})
        return self.end_step(control, reply)

    # The two halves of reset() and step() around the bridge round trip. agent.vec.BridgeVecEnv calls
    # them to talk to many sims at once: begin on every env, send all, wait for all, end on every env.

    def begin_reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
                    ) -> tuple[int, dict[str, Any]]:
        """Seeds the env (gymnasium's reset contract) and returns the sim's reset seed and options."""
        super().reset(seed=seed)
        if self._closed:
            raise RuntimeError("reset() on a closed CarlaBridgeEnv")
        # Unseeded resets draw the sim's seed from our generator, so reset(seed=s) followed by
        # plain reset()s replays the same episodes.
        sim_seed = seed if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
        self.sim_seed = sim_seed  # what the sim is reset with: recordings keep it for replays
        return sim_seed, {**self.reset_options, **(options or {})}

    def end_reset(self, reply: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Starts the episode from the sim's reset tick; returns reset()'s (observation, info)."""
        self._steps = 0
        self._last_completion = 0.0
        self._episode = {"return": 0.0, "collisions": 0, "lane_invasions": 0, "late_events": 0,
                         "speed_sum": 0.0,
                         "start_completion": float(reply.measurements["route_completion"])}
        self._measurements = self._keep(reply.measurements)
        state = self._encoder.reset(reply.measurements)
        obs = self._observe(reply.observation, state)
        self._start_frame, self._start_time = int(reply.frame), float(reply.sim_time)
        self.sim_frame = self._start_frame
        info = {"frame": 0, "sim_time": 0.0, "sim_frame": self._start_frame,
                "sim_start_time": self._start_time, "route_completion": 0.0,
                "speed": float(reply.measurements["speed"])}
        return obs, info

    def _reset_sim(self, sim_seed: int, sim_options: dict[str, Any], first_attempt: int = 1) -> Any:
        """The sim's reset; one that it could not finish (a late CARLA tick or sensor, a lost ego)
        is tried again, up to RESET_ATTEMPTS times in all: the session is fine, and the sim side
        skips the late data and respawns lost actors on the next reset. ``first_attempt``: the
        number of this call's first try (a caller that already tried once passes 2)."""
        for attempt in range(first_attempt, RESET_ATTEMPTS + 1):
            try:
                return self._client.reset(seed=sim_seed, options=sim_options)
            except EPISODE_ENDING_REMOTE_ERRORS as e:
                if attempt == RESET_ATTEMPTS:
                    raise
                log.warning("the sim side could not finish reset (attempt %d of %d: %s); trying "
                            "again", attempt, RESET_ATTEMPTS, e)
        raise AssertionError("unreachable")

    def begin_step(self, action: Any) -> dict[str, Any]:
        """Checks ``action`` and returns the control to send (agent.action maps it to the spec).

        Raises:
            RuntimeError: no episode is running (reset() first). ValueError: a bad action.
        """
        if self._measurements is None:
            raise RuntimeError("step() before reset()")
        return self._actions.control(action)

    def end_step(self, control: dict[str, Any], reply: Any
                 ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Turns the sim's tick into step()'s (observation, reward, terminated, truncated, info)."""
        m = reply.measurements
        reward, terms = compute_reward(self._measurements, m, reply.events, self.reward_config)
        self._measurements = self._keep(m)
        self._steps += 1
        collisions = count_events(reply.events, "collision")
        invasions = count_events(reply.events, "lane_invasion")
        late_events = sum(1 for e in reply.events if e.get("late"))
        off_road = bool(m["off_road"])
        pedal = control["throttle"] - control["brake"]
        state = self._encoder.encode(m, control["steer"], pedal)
        obs = self._observe(reply.observation, state)

        completion = float(m["route_completion"]) - self._episode["start_completion"]
        self._last_completion = completion
        lap_completed = completion >= self.lap_target
        terminated = bool((self.terminate_on_collision and collisions > 0)
                          or (self.terminate_on_off_road and off_road))
        truncated = (not terminated) and (self._steps >= self.max_episode_steps
                                          or (self.end_on_lap and lap_completed))
        ep = self._episode
        ep["return"] += reward
        ep["collisions"] += collisions
        ep["lane_invasions"] += invasions
        ep["late_events"] += late_events
        ep["speed_sum"] += float(m["speed"])

        self.sim_frame = int(reply.frame)
        info: dict[str, Any] = {
            "frame": self.sim_frame - self._start_frame,
            "sim_time": round(float(reply.sim_time) - self._start_time, 6),
            **{_REWARD_KEYS[t]: float(v) for t, v in terms.items()},
            "route_completion": completion, "lap_completed": lap_completed,
            "speed": float(m["speed"]), "lateral_offset": float(m["lateral_offset"]),
            "collisions": collisions, "lane_invasions": invasions, "late_events": late_events,
            "off_road": off_road,
            "steer": control["steer"], "throttle": control["throttle"], "brake": control["brake"],
        }
        if "lead_distance" in m:
            info["lead_distance"] = float(m["lead_distance"])
        if terminated or truncated:
            info["episode_metrics"] = self._metrics(completion, lap_completed)
        return obs, reward, terminated, truncated, info

    def end_episode_on_sim_error(self, error: BaseException
                                 ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """The sim side is alive and keeps the session but could not finish this step (one of
        EPISODE_ENDING_REMOTE_ERRORS): the episode ends here as truncated, ``info["sim_error"]``."""
        log.warning("the sim side could not finish step %d (%s); ending the episode as "
                    "truncated", self._steps + 1, error)
        return self.interrupt_episode({"sim_error": str(error)})

    def interrupt_episode(self, extra_info: dict[str, Any]
                          ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Ends the episode as truncated without a tick; the next call must be reset().

        Returns step()'s tuple: the last observation again, no reward, truncated, and an info with
        ``extra_info`` (why) and ``episode_metrics``.
        """
        self._measurements = None
        info: dict[str, Any] = {**extra_info, "frame": -1, "sim_time": math.nan,
                                **{f"reward_{t}": 0.0 for t in TERMS}}
        info["episode_metrics"] = self._metrics(self._last_completion, False)
        return self._copy_obs(self._last_obs), 0.0, False, True, info

    def snapshot(self) -> EnvSnapshot:
        """Saves the world's full state (on the sim side) and the env's episode state.

        ``restore`` puts both back, so the same actions give byte-identical observations, rewards
        and infos again (agent.branch builds group rollouts on this).

        Raises:
            SnapshotUnsupportedError: the sim's world cannot snapshot (e.g. CARLA 0.9).
            RuntimeError: before the first reset.
        """
        if self._measurements is None:
            raise RuntimeError("snapshot() needs a running episode: call reset() first")
        token = self._client.snapshot()
        return EnvSnapshot(token, copy.deepcopy({k: getattr(self, k) for k in _SNAPSHOT_ATTRIBUTES}))

    def restore(self, snapshot: EnvSnapshot) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Puts the world and the episode back to ``snapshot``; returns its (observation, info).

        A snapshot can be restored any number of times, also after its episode ended.

        Raises:
            SnapshotError: the sim no longer knows the token (dropped as the oldest, or the session
                was replaced, e.g. by a reconnect) or restored another moment.
            SnapshotUnsupportedError: the sim's world cannot snapshot.
        """
        if not isinstance(snapshot, EnvSnapshot):
            raise TypeError(f"restore() takes an EnvSnapshot from snapshot(), got {type(snapshot)}")
        reply = self._client.restore(snapshot.sim_token)
        state = copy.deepcopy(snapshot._env_state)
        if int(reply.frame) != state["sim_frame"]:
            raise SnapshotError(f"the sim restored frame {reply.frame}, but the snapshot was taken "
                                f"at frame {state['sim_frame']}")
        for key, value in state.items():
            setattr(self, key, value)
        info = {"frame": self.sim_frame - self._start_frame,
                "sim_time": round(float(reply.sim_time) - self._start_time, 6),
                "sim_frame": self.sim_frame, "restored": True}
        return self._copy_obs(self._last_obs), info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self._last_frame is None:
            return None
        return self._last_frame.copy()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None
        super().close()

    def __del__(self) -> None:  # a safety net only: close() is the contract
        try:
            self.close()
        except Exception:
            pass

    # ---------------------------------------------------------------- helpers
    def _observe(self, sensors: dict[str, np.ndarray], state: np.ndarray) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self.render_mode == "rgb_array" and self._render_camera is not None:
            self._last_frame = to_rgb(np.asarray(sensors[self._render_camera.name]), None)
        if self._camera is not None:
            obs["camera"] = to_rgb(np.asarray(sensors[self._camera.name]), self._camera_size)
        obs["vehicle_state"] = state
        self._last_obs = obs
        return self._copy_obs(obs)

    @staticmethod
    def _copy_obs(obs: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        assert obs is not None
        return {k: v.copy() for k, v in obs.items()}

    @staticmethod
    def _keep(measurements: dict[str, Any]) -> dict[str, Any]:
        # reply arrays may be views into buffers reused two requests later: copy what we keep
        return {k: (np.array(v) if isinstance(v, np.ndarray) else v)
                for k, v in measurements.items()}

    def _metrics(self, completion: float, lap_completed: bool) -> dict[str, float]:
        ep = self._episode
        steps = max(self._steps, 1)
        return {"return": ep.get("return", 0.0), "length": self._steps,
                "route_completion": completion, "lap_completed": float(lap_completed),
                "collisions": ep.get("collisions", 0), "lane_invasions": ep.get("lane_invasions", 0),
                "late_events": ep.get("late_events", 0),
                "mean_speed": ep.get("speed_sum", 0.0) / steps}
