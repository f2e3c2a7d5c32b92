"""ZeroMQ plumbing: endpoint checks, socket creation with safe options, connection monitoring.

The client uses a DEALER socket and the server a ROUTER socket. Unlike REQ/REP, a DEALER that timed out
is still usable (no EFSM state to break): stale replies are told apart by sequence number instead.
"""
import re
import socket
from typing import Optional, Tuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from bridge.errors import BridgeError
from bridge.protocol import DEFAULT_MAX_MESSAGE_BYTES

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_TCP = re.compile(r"^tcp://(\[[^\]]+\]|[^:/]+):(\d+|\*)$")


def parse_tcp_endpoint(endpoint: str, bind: bool = False) -> Tuple[str, Optional[int]]:
    """Splits ``tcp://host:port`` into host and port (None for ``*``).

    Ports are 1-65535; an address to bind may also say 0 or ``*`` (any free port).

    Raises:
        BridgeError: not a tcp:// endpoint of that form, or a port out of range.
    """
    match = _TCP.match(endpoint) if isinstance(endpoint, str) else None
    if not match:
        raise BridgeError("bad endpoint {!r}: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:5556"
                          .format(endpoint))
    text = match.group(2)
    port = None if text == "*" else int(text)
    if (port is None or port == 0) and not bind:
        raise BridgeError("bad endpoint {!r}: connecting needs a port in 1-65535".format(endpoint))
    if port is not None and port > 65535:
        raise BridgeError("bad endpoint {!r}: port {} is outside 1-65535".format(endpoint, port))
    return match.group(1), port


def check_bind_endpoint(endpoint: str, allow_remote: bool, authenticated: bool = False,
                        insecure: bool = False) -> None:
    """Refuses to listen beyond loopback unless asked to, and without authentication unless told
    twice (secure by default).

    Raises:
        BridgeError: the endpoint is not loopback and ``allow_remote`` is False, or it is not loopback
            and neither ``authenticated`` (CURVE) nor ``insecure`` is set.
    """
    if endpoint.startswith("ipc://"):
        return
    host, _ = parse_tcp_endpoint(endpoint, bind=True)
    if host in LOOPBACK_HOSTS:
        return
    if not allow_remote:
        raise BridgeError(
            "refusing to bind {}: it accepts connections from other machines. Bind "
            "tcp://127.0.0.1:PORT (and reach it through an SSH tunnel), or pass --allow-remote "
            "(allow_remote=True) with --curve DIR".format(endpoint))
    if not authenticated and not insecure:
        raise BridgeError(
            "refusing to bind {} without authentication: anyone who reaches it could drive the "
            "world. Pass --curve DIR (keys from: python -m bridge.keys DIR), or --insecure on a "
            "network you trust entirely".format(endpoint))


def is_same_host(endpoint: str) -> bool:
    """True when a client connecting to ``endpoint`` talks to this machine (shm may work)."""
    if endpoint.startswith("ipc://"):
        return True
    try:
        host, _ = parse_tcp_endpoint(endpoint)
    except BridgeError:
        return False
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return host in (socket.gethostname(), socket.getfqdn())
    except OSError:
        return False


def make_socket(context: zmq.Context, kind: int,
                max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, endpoint: str = "") -> zmq.Socket:
    """A socket with LINGER 0 (close never blocks) and a hard cap on inbound frame size.

    The cap is twice the application limit: messages a little too large still arrive and get a typed
    error reply; absurdly large ones make ZeroMQ drop the connection before buffering them.
    ``endpoint`` (the address the socket will bind or connect) switches IPv6 on for ``tcp://[...]``.
    """
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_message_bytes)
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)  # only then: it would turn IPv4 addresses into ::ffff:a.b.c.d
    return sock


#: frames at least this large are handed to ZeroMQ without a copy; smaller ones are copied, which is
#: cheaper than pyzmq's zero-copy bookkeeping (it copies below 64 KiB anyway: TRANSPORT_FACTS.md).
ZERO_COPY_MIN_BYTES = 64 * 1024


def send_frames(sock: zmq.Socket, frames: list, flags: int = 0) -> None:
    """Sends a multipart message, zero-copy only for the frames large enough to gain from it."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        more = zmq.SNDMORE if index < last else 0
        big = memoryview(frame).nbytes >= ZERO_COPY_MIN_BYTES
        sock.send(frame, flags | more, copy=not big)


class ConnectionMonitor(object):
    """Watches a socket's connection events so a waiting side notices a dead peer at once.

    ``poll_disconnected()`` drains pending events and reports whether the peer connection dropped
    since the last call (a killed process closes its TCP connections, which ZeroMQ reports).
    """

    HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                          | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPTED
              | zmq.EVENT_HANDSHAKE_SUCCEEDED | HANDSHAKE_FAILURES)

    def __init__(self, sock: zmq.Socket) -> None:
        self.socket = sock.get_monitor_socket(self.EVENTS)
        self.connected = False
        #: the connection dropped and has not come back (False before the first connection).
        self.lost = False
        #: the last ZMTP handshake failure (a CURVE key the server refused...), until one succeeds.
        self.handshake_failure = None  # type: Optional[int]

    def poll_disconnected(self) -> bool:
        dropped = False
        while self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # no syscall, unlike poll(0)
            event = recv_monitor_message(self.socket)["event"]
            if event in (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED):
                self.connected = True
                self.lost = False
            elif event == zmq.EVENT_DISCONNECTED:
                self.connected = False
                self.lost = True
                dropped = True
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_failure = None
            elif event & self.HANDSHAKE_FAILURES:
                self.handshake_failure = event
        return dropped

    def close(self, sock: zmq.Socket) -> None:
        if self.socket is None:
            return
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.socket.close(linger=0)
        self.socket = None
