"""Vectorised envs over N sims: BridgeVecEnv (all N from this process), or SB3's Subproc/DummyVecEnv.

BridgeVecEnv talks to every sim from the trainer's own process: ``step_async`` sends the N actions at
once, ``step_wait`` waits on all N bridge clients with one ZeroMQ poller and translates each reply as it
arrives. No worker process and no pickle hop: the sims' ticks overlap while this process only encodes,
decodes and translates. ``make_vec_env`` picks it for more than one endpoint.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import zmq
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn
from stable_baselines3.common.vec_env.util import dict_to_obs, obs_space_info

from agent.env import RECONNECTABLE, RESET_ATTEMPTS, CarlaBridgeEnv
from bridge.errors import EPISODE_ENDING_REMOTE_ERRORS, SessionBusyError

log = logging.getLogger(__name__)

#: longest single poll while replies are outstanding; each client's own deadline still decides
#: when a sim counts as timed out (its ``timeout``), this only bounds how late that is noticed.
_POLL_SLICE_MS = 100


#: the kinds of vectorisation make_vec_env builds (config key ``vec``).
VEC_KINDS = ("auto", "bridge", "subproc", "dummy")


def split_endpoints(endpoints: Sequence[str] | str) -> list[str]:
    """A list of endpoints from a list or a comma-separated string.

    Raises:
        ValueError: no endpoint at all.
    """
    if isinstance(endpoints, str):
        endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
    endpoints = list(endpoints)
    if not endpoints:
        raise ValueError("at least one sim endpoint is needed")
    return endpoints


class _Recovery:
    """One env's background reconnect: a new session with its sim, then a reset.

    The thread owns the env until ``future`` is done; nothing else touches that env meanwhile.
    """

    def __init__(self, env: CarlaBridgeEnv, cause: BaseException, cancelled: threading.Event) -> None:
        self.future: Future = Future()
        # daemon: a sim that never comes back must not keep a finished trainer alive
        self.thread = threading.Thread(target=self._run, args=(env, cause, cancelled),
                                       name=f"reconnect {env.endpoint}", daemon=True)
        self.thread.start()

    def _run(self, env: CarlaBridgeEnv, cause: BaseException, cancelled: threading.Event) -> None:
        try:
            deadline = time.monotonic() + env.reconnect_timeout
            while True:
                try:
                    env._reconnect(cause, cancelled)
                    result = env.reset()
                    break
                except SessionBusyError:
                    raise  # another trainer took the sim: a configuration problem, never retried
                except RECONNECTABLE as e:  # back, then gone again before the reset answered
                    if time.monotonic() >= deadline or cancelled.is_set():
                        raise
                    cause = e
        except BaseException as e:
            self.future.set_exception(e)
        else:
            self.future.set_result(result)
        finally:
            if cancelled.is_set():  # BridgeVecEnv.close() left this env to us
                env.close()


class BridgeVecEnv(VecEnv):
    """A Stable-Baselines3 VecEnv over N sims, all driven from this process (no worker processes).

    Env i is a CarlaBridgeEnv on ``endpoints[i]`` (same spaces; every sim must announce the same
    spec). ``step_async`` checks and sends all N actions; ``step_wait`` waits on the N bridge clients
    with one ZeroMQ poller and translates each reply as it arrives, so the sims tick concurrently.

    Auto-reset as in SB3's DummyVecEnv: when env i's episode ends, ``step_wait`` returns the first
    observation of its next episode, with the last one in ``info["terminal_observation"]`` and
    ``info["TimeLimit.truncated"]`` set for truncations. The reset request goes out as soon as the
    ending tick arrives, overlapping the other sims' ticks.

    A failing sim, with ``reconnect=True``: when a sim dies, stops answering within ``timeout`` or
    loses our session, its env's episode ends as truncated (``info["bridge_error"]`` says why) and
    the env reconnects in a background thread while the other envs keep stepping. Until it is back,
    that env repeats its last observation with reward 0 and ``done`` False
    (``info["bridge_reconnecting"]``). The step on which it is back is ``done`` (truncated, with the
    repeated observation as ``terminal_observation`` and ``info["bridge_reconnected"]``) and returns
    the first observation of a fresh episode; the idle steps count in no episode statistics. A sim
    not back within ``reconnect_timeout`` makes ``step_wait`` raise. With ``reconnect=False`` any
    bridge failure raises from ``step_wait`` (once the other envs' replies are in).

    Args:
        endpoints: the sims' ``tcp://``/``ipc://`` addresses (or a comma-separated string);
            ``inprocess://`` worlds work too, stepped in turn.
        seed: base seed: env i's first reset gets ``seed + i``, and its action space that seed.
        monitor: put SB3 Monitor's ``info["episode"]`` (``r``, ``l``, ``t``) on every episode end;
            ``env_is_wrapped(Monitor)`` then answers True so ``evaluate_policy`` uses them.
        connect_threads: sessions are opened concurrently by up to this many threads (a CARLA sim
            may take seconds to answer hello).
        env_kwargs: CarlaBridgeEnv arguments for every env (``timeout``, ``reconnect``,
            ``reconnect_timeout``, reward and observation settings...).

    Raises:
        ValueError: no endpoints, or sims announcing different spaces. Any error of connecting.
    """

    def __init__(self, endpoints: Sequence[str] | str, *, seed: int | None = None,
                 monitor: bool = True, connect_threads: int = 8, **env_kwargs: Any) -> None:
        self.endpoints = split_endpoints(endpoints)
        self.reconnect = bool(env_kwargs.pop("reconnect", False))
        self.monitor = monitor
        self.closed = False
        self._closing = threading.Event()
        self.envs = self._connect_all(env_kwargs, connect_threads)
        first = self.envs[0]
        for env in self.envs[1:]:
            if (env.observation_space, env.action_space) != (first.observation_space,
                                                             first.action_space):
                self._close_envs(self.envs)
                raise ValueError(f"the sims at {first.endpoint} and {env.endpoint} give different "
                                 f"spaces ({first.observation_space} vs {env.observation_space}): "
                                 "serve the same sensors and settings on every sim")
        super().__init__(len(self.envs), first.observation_space, first.action_space)
        self.keys, shapes, dtypes = obs_space_info(self.observation_space)
        self.buf_obs = OrderedDict((k, np.zeros((self.num_envs, *shapes[k]), dtype=dtypes[k]))
                                   for k in self.keys)
        n = self.num_envs
        self._controls: list[dict[str, Any] | None] = [None] * n
        self._send_errors: list[BaseException | None] = [None] * n
        # the auto-reset in flight per env: (seed, options, attempt), for a retry when the sim
        # could not finish it (as CarlaBridgeEnv.reset tries again)
        self._auto_resets: list[tuple[Any, Any, int] | None] = [None] * n
        self._recoveries: list[_Recovery | None] = [None] * n
        self._waiting = False
        # The reply sockets of the envs waited on, kept registered from one step to the next
        # (re-registering N sockets every step costs more than checking that nothing changed).
        self._poller = zmq.Poller()
        self._owner: dict[zmq.Socket, int] = {}
        self._socketless: set[int] = set()
        self._episode_returns = np.zeros(n)
        self._episode_lengths = np.zeros(n, dtype=np.int64)
        self._t_start = time.time()
        if seed is not None:
            self.seed(seed)

    def _connect_all(self, env_kwargs: dict[str, Any], threads: int) -> list[CarlaBridgeEnv]:
        def connect(endpoint: str) -> CarlaBridgeEnv:
            return CarlaBridgeEnv(endpoint, reconnect=False, **env_kwargs)

        with ThreadPoolExecutor(max(1, min(threads, len(self.endpoints))),
                                thread_name_prefix="bridge-connect") as pool:
            futures = [pool.submit(connect, e) for e in self.endpoints]
        envs = [f.result() for f in futures if f.exception() is None]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            self._close_envs(envs)
            raise errors[0]
        return envs

    # ---------------------------------------------------------------- VecEnv API
    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        seeds = super().seed(seed)
        for env, env_seed in zip(self.envs, seeds):
            env.action_space.seed(env_seed)
        return seeds

    def reset(self) -> VecEnvObs:
        self._check_open()
        for index in range(self.num_envs):
            self._finish_recovery(index)
        self._abandon_in_flight()
        requests = []
        for index, env in enumerate(self.envs):
            options = self._options[index] or None
            requests.append(env.begin_reset(seed=self._seeds[index], options=options))
        for env, (sim_seed, sim_options) in zip(self.envs, requests):
            env.client.send_reset(sim_seed, sim_options)
        for index, (env, (sim_seed, sim_options)) in enumerate(zip(self.envs, requests)):
            try:
                tick = env.client.recv_tick()
            except EPISODE_ENDING_REMOTE_ERRORS as e:  # the sim lives on: try again, as env.reset
                log.warning("env %d: the sim side could not finish reset (attempt 1 of %d: %s); "
                            "trying again", index, RESET_ATTEMPTS, e)
                tick = env._reset_sim(sim_seed, sim_options, first_attempt=2)
            except RECONNECTABLE as e:  # a reset must return an observation: reconnect right here
                if not self.reconnect:
                    raise
                env._reconnect(e, self._closing)
                tick = env.client.reset(sim_seed, sim_options)
            obs, self.reset_infos[index] = env.end_reset(tick)
            self._save_obs(index, obs)
        self._episode_returns[:] = 0.0
        self._episode_lengths[:] = 0
        self._reset_seeds()
        self._reset_options()
        return self._obs_from_buf()

    def step_async(self, actions: np.ndarray) -> None:
        self._check_open()
        if self._waiting:
            raise RuntimeError("step_async() twice without step_wait()")
        # Check every action before sending any: a bad one leaves no sim a tick ahead.
        controls = [None if self._recoveries[i] is not None else env.begin_step(actions[i])
                    for i, env in enumerate(self.envs)]
        for index, control in enumerate(controls):
            self._send_errors[index] = None
            if control is not None:
                try:
                    self.envs[index].client.send_step(control)
                except RECONNECTABLE as e:
                    self._send_errors[index] = e
        self._controls = controls
        self._waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        if not self._waiting:
            raise RuntimeError("step_wait() without step_async()")
        n = self.num_envs
        rewards = np.zeros(n, dtype=np.float32)
        dones = np.zeros(n, dtype=bool)
        infos: list[dict[str, Any]] = [{} for _ in range(n)]
        errors: list[BaseException] = []
        out = (rewards, dones, infos, errors)
        pending: dict[int, str] = {}  # env index -> the command whose tick we wait for
        try:
            for index, control in enumerate(self._controls):
                if self._send_errors[index] is not None:
                    self._fail(index, self._send_errors[index], out, episode_over=False)
                elif control is not None:
                    pending[index] = "step"
                else:
                    self._poll_recovery(index, out)
            self._watch_only(pending)
            while pending:
                # in-process clients have no sockets: nothing to wait for, take their ticks now
                wait_ms = 0 if not self._socketless.isdisjoint(pending) else _POLL_SLICE_MS
                fired = {self._owner[sock] for sock, _ in self._poller.poll(wait_ms)}
                # nothing fired: a slice passed, so look at every client (its deadline may be due, or
                # its connection dropped: recv_tick checks the monitor, which is not polled here)
                for index in sorted(fired or set(pending)):
                    if index in pending:
                        self._collect(index, pending, out)
                    else:  # done this step; unwatched only now (cheaper than after every reply)
                        self._unwatch(index)
        finally:
            self._waiting = False
            self._controls = [None] * n
        if errors:
            raise errors[0]
        return self._obs_from_buf(), rewards, dones, infos

    def close(self) -> None:
        """Ends every session (the sims restore their worlds) and stops reconnects. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._closing.set()
        envs = []
        for env, recovery in zip(self.envs, self._recoveries):
            if recovery is not None:
                recovery.thread.join(timeout=2.0)
                if recovery.thread.is_alive():
                    log.warning("still reconnecting to %s: that thread closes its env", env.endpoint)
                    continue
            envs.append(env)
        self._close_envs(envs)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.envs[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            setattr(self.envs[i], attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        return [getattr(self.envs[i], method_name)(*method_args, **method_kwargs)
                for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
                       ) -> list[bool]:
        # Monitor's info["episode"] is produced here (see ``monitor``); no other wrapper is applied.
        wrapped = self.monitor and wrapper_class is Monitor
        return [wrapped for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [env.render() for env in self.envs]

    def __del__(self) -> None:  # a safety net only: close() is the contract
        try:
            self.close()
        except Exception:
            pass

    # ---------------------------------------------------------------- stepping
    def _watch_only(self, indices: Any) -> None:
        """Makes the poller hold exactly the wait sockets of envs ``indices`` (usually it does)."""
        wanted: dict[zmq.Socket, int] = {}
        self._socketless = set()
        for index in indices:
            sockets = self.envs[index].client.wait_sockets
            if not sockets:
                self._socketless.add(index)
            for sock in sockets:
                wanted[sock] = index
        if wanted == self._owner:
            return
        for sock, index in list(self._owner.items()):
            if wanted.get(sock) != index:
                del self._owner[sock]
                self._poller.unregister(sock)
        for sock, index in wanted.items():
            if sock not in self._owner:
                self._poller.register(sock, zmq.POLLIN)
                self._owner[sock] = index

    def _unwatch(self, index: int) -> None:
        """Stops polling env ``index``'s sockets (before its client is replaced or closed)."""
        for sock, owner in list(self._owner.items()):
            if owner == index:
                del self._owner[sock]
                self._poller.unregister(sock)

    def _collect(self, index: int, pending: dict[int, str], out: tuple) -> None:
        """Takes env ``index``'s tick if it is here; a step that ends an episode sends the reset."""
        rewards, dones, infos, errors = out
        env = self.envs[index]
        command = pending[index]
        try:
            tick = env.client.recv_tick(block=False)
            if tick is None:
                return
            if command == "reset":
                del pending[index]
                self._auto_resets[index] = None
                obs, self.reset_infos[index] = env.end_reset(tick)
                self._save_obs(index, obs)
                return
            step = env.end_step(self._controls[index], tick)
        except EPISODE_ENDING_REMOTE_ERRORS as e:  # the sim lives on: as CarlaBridgeEnv.step does
            if command == "reset":
                self._retry_auto_reset(index, e, pending, out)
                return
            step = env.end_episode_on_sim_error(e)
        except RECONNECTABLE as e:
            del pending[index]
            self._fail(index, e, out, episode_over=command == "reset")
            return
        except Exception as e:  # the sim refused the request (RemoteError...): the caller's problem
            del pending[index]
            self._unwatch(index)
            errors.append(e)
            return
        obs, reward, terminated, truncated, info = step
        rewards[index] = reward
        dones[index] = done = terminated or truncated
        info["TimeLimit.truncated"] = truncated and not terminated
        infos[index] = info
        self._count(index, reward, info, episode_over=done)
        if not done:
            del pending[index]
            self._save_obs(index, obs)
            return
        info["terminal_observation"] = obs
        self._save_obs(index, obs)  # until the reset's tick replaces it
        sim_seed, sim_options = env.begin_reset()
        self._send_auto_reset(index, (sim_seed, sim_options, 1), pending, out)

    def _send_auto_reset(self, index: int, request: tuple[Any, Any, int], pending: dict[int, str],
                         out: tuple) -> None:
        sim_seed, sim_options, _ = request
        try:
            self.envs[index].client.send_reset(sim_seed, sim_options)
        except RECONNECTABLE as e:
            del pending[index]
            self._auto_resets[index] = None
            self._fail(index, e, out, episode_over=True)
            return
        self._auto_resets[index] = request
        pending[index] = "reset"

    def _retry_auto_reset(self, index: int, error: BaseException, pending: dict[int, str],
                          out: tuple) -> None:
        """An auto-reset the sim could not finish (a late CARLA tick or sensor, a lost ego) is sent
        again, up to RESET_ATTEMPTS times in all; after that the error reaches the caller."""
        request = self._auto_resets[index]
        assert request is not None
        sim_seed, sim_options, attempt = request
        if attempt >= RESET_ATTEMPTS:
            del pending[index]
            self._unwatch(index)
            self._auto_resets[index] = None
            out[3].append(error)
            return
        log.warning("env %d: the sim side could not finish reset (attempt %d of %d: %s); trying "
                    "again", index, attempt, RESET_ATTEMPTS, error)
        self._send_auto_reset(index, (sim_seed, sim_options, attempt + 1), pending, out)

    def _fail(self, index: int, error: BaseException, out: tuple, episode_over: bool) -> None:
        """Env ``index`` lost its sim: truncate its episode and reconnect in the background."""
        rewards, dones, infos, errors = out
        self._unwatch(index)  # no more waiting on it; a reconnect thread closes its sockets
        if not self.reconnect:
            errors.append(error)
            return
        env = self.envs[index]
        log.warning("env %d: the sim at %s failed (%s: %s); reconnecting in the background while "
                    "the other envs step on", index, env.endpoint, type(error).__name__, error)
        if episode_over:  # the step already reported done; only its reset failed
            infos[index]["bridge_error"] = f"{type(error).__name__}: {error}"
        else:
            obs, reward, _, _, info = env.interrupt_episode(
                {"bridge_error": f"{type(error).__name__}: {error}"})
            info["TimeLimit.truncated"] = True
            info["terminal_observation"] = obs
            rewards[index], dones[index], infos[index] = reward, True, info
            self._count(index, reward, info, episode_over=True)
            self._save_obs(index, obs)
        self._recoveries[index] = _Recovery(env, error, self._closing)

    def _poll_recovery(self, index: int, out: tuple) -> None:
        """The step of an env whose sim is reconnecting: idle, or back with a fresh episode."""
        rewards, dones, infos, errors = out
        recovery = self._recoveries[index]
        assert recovery is not None
        if not recovery.future.done():
            infos[index] = {"bridge_reconnecting": True}
            return
        self._recoveries[index] = None
        env = self.envs[index]
        try:
            obs, reset_info = recovery.future.result()
        except BaseException as e:
            errors.append(self._gave_up(env, e))
            return
        log.info("env %d: the sim at %s is back", index, env.endpoint)
        infos[index] = {"bridge_reconnected": True, "TimeLimit.truncated": True,
                        "terminal_observation": self._env_obs(index)}
        dones[index] = True
        self.reset_infos[index] = reset_info
        self._save_obs(index, obs)
        self._episode_returns[index], self._episode_lengths[index] = 0.0, 0

    def _finish_recovery(self, index: int) -> None:
        """Waits for env ``index``'s reconnect, if any (reset() needs every sim)."""
        recovery, self._recoveries[index] = self._recoveries[index], None
        if recovery is None:
            return
        env = self.envs[index]
        try:
            recovery.future.result(timeout=env.reconnect_timeout + 2 * env.timeout)
        except BaseException as e:
            raise self._gave_up(env, e) from e

    @staticmethod
    def _gave_up(env: CarlaBridgeEnv, error: BaseException) -> BaseException:
        if isinstance(error, RECONNECTABLE) or isinstance(error, TimeoutError):
            return type(error)(f"the sim at {env.endpoint} did not come back within "
                               f"{env.reconnect_timeout:g} s (reconnect_timeout): {error}")
        return error

    def _abandon_in_flight(self) -> None:
        """Drops the replies of a step_async that reset() cancels (SB3's VecEnv contract)."""
        if not self._waiting:
            return
        self._waiting = False
        for env, control in zip(self.envs, self._controls):
            if control is not None and env.client.in_flight:
                try:
                    env.client.recv_tick()
                except Exception as e:  # the reset that follows reconnects or raises
                    log.debug("abandoned step to %s failed: %s", env.endpoint, e)
        self._controls = [None] * self.num_envs

    def _count(self, index: int, reward: float, info: dict[str, Any], episode_over: bool) -> None:
        """Monitor's bookkeeping: info["episode"] at the end of every real episode."""
        self._episode_returns[index] += reward
        self._episode_lengths[index] += 1
        if episode_over:
            if self.monitor:
                info["episode"] = {"r": round(float(self._episode_returns[index]), 6),
                                   "l": int(self._episode_lengths[index]),
                                   "t": round(time.time() - self._t_start, 6)}
            self._episode_returns[index], self._episode_lengths[index] = 0.0, 0

    # ---------------------------------------------------------------- buffers
    def _save_obs(self, index: int, obs: dict[str, np.ndarray]) -> None:
        for key in self.keys:
            self.buf_obs[key][index] = obs if key is None else obs[key]

    def _env_obs(self, index: int) -> dict[str, np.ndarray]:
        return {key: self.buf_obs[key][index].copy() for key in self.keys}

    def _obs_from_buf(self) -> VecEnvObs:
        return dict_to_obs(self.observation_space, deepcopy(self.buf_obs))

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this BridgeVecEnv is closed")

    @staticmethod
    def _close_envs(envs: Sequence[CarlaBridgeEnv]) -> None:
        for env in envs:
            try:
                env.close()
            except Exception as e:  # closing the others matters more
                log.debug("closing the env of %s: %s", env.endpoint, e)


def make_env(endpoint: str, seed: int | None = None, monitor: bool = True,
             record: Any = None, **env_kwargs: Any) -> Callable[[], gym.Env]:
    """A thunk (CleanRL's ``make_env``): the env, and so its sockets, are created where it is called.

    Args:
        endpoint: the sim's address (or ``inprocess://builtin``).
        seed: seeds the env's action space (the vec env seeds its first reset).
        monitor: wrap in SB3's Monitor so episode returns/lengths reach ``info["episode"]``.
        record: an agent.dataset.DatasetWriter: record every episode into its Minari dataset
            (the env must then live in this process: it shares the writer).
        env_kwargs: passed to CarlaBridgeEnv.
    """

    def thunk() -> gym.Env:
        if multiprocessing.parent_process() is not None:
            # In a SubprocVecEnv worker: leave Ctrl-C and SIGTERM (often sent to the whole process
            # group) to the trainer, which saves a checkpoint and then closes us; a worker dying
            # first would break the trainer's step mid-rollout. Workers are daemons: they cannot
            # outlive the trainer.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        env: gym.Env = CarlaBridgeEnv(endpoint, **env_kwargs)
        if record is not None:
            from agent.dataset import EpisodeRecorder

            env = EpisodeRecorder(env, record, {"endpoint": endpoint, **env_kwargs})
        if seed is not None:
            env.action_space.seed(seed)
        if monitor:
            env = Monitor(env)
        return env

    return thunk


def make_vec_env(endpoints: Sequence[str] | str, seed: int | None = 0, vec: str = "auto",
                 monitor: bool = True, record: Any = None, **env_kwargs: Any) -> VecEnv:
    """One env per endpoint, stepped in parallel.

    Args:
        endpoints: sim addresses, one env each (a comma-separated string is accepted too).
        seed: base seed; env i gets ``seed + i``.
        vec: ``"bridge"`` (BridgeVecEnv: all sims from this process, concurrently), ``"subproc"``
            (one worker process per env), ``"dummy"`` (all in this process, in turn) or ``"auto"``:
            bridge for more than one endpoint, dummy for one (a plain env, nothing to overlap) or
            when recording.
        monitor: wrap each env in SB3's Monitor (BridgeVecEnv reports the same info["episode"]).
        record: an agent.dataset.DatasetWriter that every env records its episodes into; needs
            plain envs in this process (``vec`` "dummy" or "auto").
        env_kwargs: passed to every CarlaBridgeEnv.

    Raises:
        ValueError: no endpoints, an unknown ``vec``, or ``record`` with ``vec="subproc"``.
    """
    endpoints = split_endpoints(endpoints)
    if vec not in VEC_KINDS:
        raise ValueError(f"vec must be one of {', '.join(VEC_KINDS)}; got {vec!r}")
    if record is not None and vec in ("bridge", "subproc"):
        raise ValueError("recording wraps each env in this process (they share one dataset writer): "
                         "use vec=dummy or vec=auto")
    if vec == "bridge" or (vec == "auto" and len(endpoints) > 1 and record is None):
        return BridgeVecEnv(endpoints, seed=seed, monitor=monitor, **env_kwargs)
    thunks = [make_env(e, None if seed is None else seed + i, monitor, record, **env_kwargs)
              for i, e in enumerate(endpoints)]
    if vec == "dummy" or (vec == "auto" and (len(thunks) == 1 or record is not None)):
        venv: VecEnv = DummyVecEnv(thunks)
    else:
        # forkserver: workers start clean (no copy of the trainer's torch threads or sockets)
        venv = SubprocVecEnv(thunks, start_method="forkserver")
    if seed is not None:
        venv.seed(seed)  # env i's first reset gets seed + i; later resets draw from its generator
    return venv
