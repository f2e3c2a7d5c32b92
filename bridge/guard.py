"""Keeps the sim side's memory bounded whatever its peers send, by dropping the connections that hog it.

ZeroMQ delivers a multipart message only once its last frame has arrived, and until then libzmq's I/O
thread buffers every frame; ZMQ_MAXMSGSIZE caps single frames, RCVHWM counts whole messages only, and
there is no limit on the frames of one unfinished message. So a peer that keeps sending frames marked
"more" grows the server without bound, and the application never sees a byte of it.

The guard is a thread that watches the server process's resident memory (``/proc/self/statm``, a few
microseconds per look) and the ROUTER socket's connections (socket-monitor events carry each accepted
connection's file descriptor). When the process has grown by more than its budget over the baseline, it
shuts down (``shutdown(2)``, never ``close``: libzmq still owns the descriptor) every connection but the
session owner's (its request and heartbeat connections); libzmq then sees the end of the stream, drops
the connection and frees its buffered frames, and the guard hands the freed heap back to the system (glibc ``malloc_trim``). Well-behaved
clients reconnect on their own (DEALER sockets do). The trainer's request connection is never dropped,
nor its heartbeat connection once a heartbeat came over it. The budget must cover the world's own
growth after serving starts (a CARLA session with many sensors may need more: ``--memory-budget``);
past it, every other peer is refused, which the log says once per 10 s.
"""
import ctypes
import ctypes.util
import logging
import os
import socket
import threading
import time
from typing import Dict, NamedTuple, Optional, Tuple

import zmq
from zmq.utils.monitor import recv_monitor_message

logger = logging.getLogger(__name__)

#: default growth, over the RSS measured when serving starts, at which peers' connections are dropped.
DEFAULT_MEMORY_BUDGET = 192 * 1024 * 1024
#: seconds between two looks at the process's memory once it is near its budget. A peer on loopback
#: buffers at most ~2 GB/s in libzmq, so the overshoot past the budget stays below ~50 MB.
DEFAULT_INTERVAL = 0.02
#: the fastest a peer on loopback fills libzmq's buffers, bytes/s: while the process is far below its
#: budget the guard sleeps as long as such a peer would need to reach it, never longer than
#: MAX_INTERVAL. Every wake-up costs CPU (0.05-0.2 ms on a small VM, Python 3.6); 50 looks a second
#: were ~0.5 ms of CPU per 50 ms tick of a sim, as much as the tick's own work.
PEAK_GROWTH_RATE = 2 * 1024 * 1024 * 1024
MAX_INTERVAL = 0.25
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> Optional[int]:
    """This process's resident set size, or None where /proc is unavailable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def _load_malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: freed memory is reused, just not returned
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def trim_heap() -> None:
    """Returns freed heap pages to the system (glibc), so a dropped peer's frames leave RSS too."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class Connection(NamedTuple):
    """One accepted connection: its descriptor and its peer's address (descriptors are reused; the
    peer's address and port tell two TCP connections on one descriptor apart)."""

    fd: int
    peer: str


def _peer_name(fd: int) -> Optional[str]:
    """The peer address of the socket behind ``fd``, or None when it is no connected socket."""
    try:
        sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)  # a dup: closing it is safe
    except OSError:
        return None
    try:
        return str(sock.getpeername())
    except OSError:
        return None
    finally:
        sock.close()


def shutdown_connection(connection: Connection) -> bool:
    """Ends a connection libzmq owns, without closing its descriptor (libzmq does that itself).

    The peer name is compared first: the descriptor may already belong to a newer connection.
    """
    try:
        sock = socket.fromfd(connection.fd, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        try:
            peer = str(sock.getpeername())
        except OSError:
            peer = ""
        if peer != connection.peer:
            return False
        sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        sock.close()


class ConnectionGuard(object):
    """Tracks a ROUTER socket's connections and drops memory hogs (see the module docstring).

    Create it in the thread that owns the socket (it installs the socket monitor), then ``start()``.
    ``protected`` holds the session owner's connections (requests and heartbeats); the server sets it.

    Args:
        sock: the server's ROUTER socket.
        budget: bytes of growth over the baseline RSS before other connections than the session
            owner's are dropped. 0 disables the memory checks.
        interval: seconds between memory checks near the budget; far below it the guard waits as
            long as a peer filling memory at PEAK_GROWTH_RATE would need to reach the budget (at
            most MAX_INTERVAL), so the overshoot is what such a peer sends in ``interval``.
    """

    EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED

    def __init__(self, sock: zmq.Socket, budget: int = DEFAULT_MEMORY_BUDGET,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.budget = budget
        self.interval = interval
        self.protected = ()  # type: Tuple[Connection, ...]
        self.kicked = 0
        self._socket = sock
        self._monitor = sock.get_monitor_socket(self.EVENTS)
        self._monitor_poller = zmq.Poller()  # kept: Socket.poll builds a Poller every call
        self._monitor_poller.register(self._monitor, zmq.POLLIN)
        self._lock = threading.Lock()
        self._connections = {}  # type: Dict[int, Connection]
        self._stopped = threading.Event()
        self._thread = None  # type: Optional[threading.Thread]
        self.baseline = rss_bytes()

    # -- read by the serving thread --------------------------------------------------------------

    def connection(self, fd: Optional[int]) -> Optional[Connection]:
        """The live connection behind a descriptor (a request's SRCFD), or None."""
        if fd is None:
            return None
        with self._lock:
            known = self._connections.get(fd)
        if known is not None:
            return known
        # The guard thread has not seen this connection's ACCEPTED event yet (a hello right after
        # connecting): look at the socket itself, and record it so its DISCONNECTED event removes it.
        peer = _peer_name(fd)
        if peer is None:
            return None
        with self._lock:
            return self._connections.setdefault(fd, Connection(fd, peer))

    def is_connected(self, connection: Optional[Connection]) -> bool:
        """False once that connection dropped (a later one may reuse its descriptor)."""
        if connection is None:
            return False
        with self._lock:
            return self._connections.get(connection.fd) == connection

    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    # -- the thread ------------------------------------------------------------------------------

    def start(self) -> None:
        # daemon: a stuck guard must never keep a finished sim side alive.
        self._thread = threading.Thread(target=self._run, name="bridge-guard", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops the thread and the monitor. Idempotent; call before closing the socket."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        if self._thread is None or not self._thread.is_alive():
            self._monitor.close(linger=0)

    def next_wait(self, growth: Optional[int]) -> float:
        """Seconds until the next look at memory: ``interval`` near the budget, longer far below it
        (as long as a peer growing the process at PEAK_GROWTH_RATE needs to reach the budget)."""
        if not self.budget or growth is None:
            return MAX_INTERVAL  # no memory checks: the thread only applies monitor events
        headroom = (self.budget - growth) / float(PEAK_GROWTH_RATE)
        return min(MAX_INTERVAL, max(self.interval, headroom))

    def _run(self) -> None:
        trim_due = None  # type: Optional[float]
        dropped_unlogged, logged_at = 0, -1e9
        wait = self.interval
        while not self._stopped.is_set():
            fresh = False
            try:
                if self._monitor_poller.poll(wait * 1000):
                    fresh, dropped = self._drain_events()
                    if dropped:
                        trim_due = trim_due or time.monotonic() + 0.1
            except zmq.ZMQError:
                return  # the socket was closed under us: the server is shutting down
            now = time.monotonic()
            if trim_due is not None and now >= trim_due:
                trim_heap()  # after libzmq freed the dropped connections' frames
                trim_due = None
            rss = rss_bytes()
            growth = None if rss is None or self.baseline is None else rss - self.baseline
            # a new peer is when growth may start: look again soon whatever the headroom
            wait = self.interval if fresh else self.next_wait(growth)
            if trim_due is not None:
                wait = max(0.0, min(wait, trim_due - now))
            if not self.budget or growth is None:
                continue
            if growth > self.budget:
                dropped = self._kick()
                if dropped:
                    trim_due = now + 0.1
                    dropped_unlogged += dropped
                if dropped_unlogged and now - logged_at >= 10.0:  # one line per 10 s at most
                    logger.warning(
                        "memory grew by %d MB (budget %d MB): dropped %d peer connection(s) that were "
                        "not the trainer's (unfinished messages?); raise the memory budget if the "
                        "world itself needs more", growth >> 20, self.budget >> 20, dropped_unlogged)
                    dropped_unlogged, logged_at = 0, now
                wait = self.interval

    def _drain_events(self) -> Tuple[bool, bool]:
        """Applies pending monitor events; (a connection was accepted, a connection went away)."""
        accepted = dropped = False
        while self._monitor_poller.poll(0):
            event = recv_monitor_message(self._monitor)
            fd = event["value"]
            if event["event"] == zmq.EVENT_ACCEPTED:
                peer = _peer_name(fd)
                if peer is not None:
                    accepted = True
                    with self._lock:
                        self._connections[fd] = Connection(fd, peer)
            elif event["event"] in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                with self._lock:
                    dropped = self._connections.pop(fd, None) is not None or dropped
        return accepted, dropped

    def _kick(self) -> int:
        protected = self.protected
        with self._lock:
            victims = [c for c in self._connections.values() if c not in protected]
        count = sum(1 for c in victims if shutdown_connection(c))
        self.kicked += count
        return count

