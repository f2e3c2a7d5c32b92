"""Length-prefixed messages over TCP, as every CARLA 0.8.4 port speaks them.

Each message is a little-endian uint32 length, then that many bytes; a zero-length message is legal
(it ends a frame on the stream port). Every read and write has a deadline; a peer that closes the
connection is a LegacyConnectionError and a message longer than ``max_message`` a
LegacyProtocolError, so memory stays bounded whatever the peer sends.
"""
import select
import socket
import struct
import time
from typing import Any, List, Optional, Sequence

from carla_client.carla084.errors import (LegacyConnectionError, LegacyProtocolError,
                                          LegacyTimeoutError)

_LENGTH = struct.Struct("<L")
#: largest message accepted: a 4K BGRA camera frame (3840 x 2160 x 4 bytes) plus headers, rounded up.
MAX_MESSAGE = 40 << 20
_SENDMSG = hasattr(socket.socket, "sendmsg")  # not on Windows
_MAX_PARTS = 512  # well below any IOV_MAX
#: free bytes the receive buffer offers each read (it grows to hold a longer message whole).
_MIN_ROOM = 1 << 16


class FramedSocket(object):
    """One TCP connection carrying length-prefixed messages.

    The socket stays non-blocking; waits go through ``select`` with the caller's deadline. Reads
    land in a preallocated buffer (``recv_into``), so a frame costs one system call to wait, one to
    read, and one copy per message out of the buffer.

    Args:
        sock: a connected socket (this object owns it).
        name: how errors name the peer, e.g. "127.0.0.1:2001 (stream)".
        max_message: the longest message accepted.
    """

    def __init__(self, sock: socket.socket, name: str, max_message: int = MAX_MESSAGE) -> None:
        self._sock = sock  # type: Optional[socket.socket]
        self.name = name
        self.max_message = max_message
        self._buffer = bytearray(2 * _MIN_ROOM)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0  # unread bytes are _buffer[_start:_end]
        sock.settimeout(0.0)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small control messages

    @classmethod
    def connect(cls, host: str, port: int, name: str, timeout: float, attempts: int = 1,
                retry_delay: float = 0.2) -> "FramedSocket":
        """Connects, retrying refused connections ``attempts`` times (0.8.4 ports open late).

        Raises:
            LegacyConnectionError: still refused after the last attempt.
        """
        label = "{}:{} ({})".format(host, port, name)
        error = None  # type: Optional[Exception]
        for attempt in range(max(1, attempts)):
            if attempt:
                time.sleep(retry_delay)
            try:
                return cls(socket.create_connection((host, port), timeout=timeout), label)
            except OSError as e:
                error = e
        raise LegacyConnectionError("cannot connect to {} after {} attempt(s): {}".format(
            label, max(1, attempts), error)) from error

    @property
    def closed(self) -> bool:
        return self._sock is None

    def fileno(self) -> int:
        return self._live().fileno()

    def _live(self) -> socket.socket:
        if self._sock is None:
            raise LegacyConnectionError("{}: connection already closed".format(self.name))
        return self._sock

    def send(self, payload: bytes, timeout: float) -> None:
        """Writes one message.

        Raises:
            LegacyTimeoutError: the peer did not read for ``timeout`` seconds.
            LegacyConnectionError: the connection is closed or broken.
        """
        self.send_many([payload], timeout)

    def send_many(self, payloads: Sequence[Any], timeout: float) -> None:
        """Writes several messages with one system call (a stream frame: measurements, sensors, b"").

        A payload is any bytes-like object (a memoryview of an image needs no copy).

        Raises:
            as send().
        """
        sock = self._live()
        parts = []  # type: List[Any]
        total = 0
        for payload in payloads:
            size = len(payload)
            parts += (_LENGTH.pack(size), payload)
            total += 4 + size
        try:
            if _SENDMSG and len(parts) <= _MAX_PARTS:
                sent = sock.sendmsg(parts)  # gathers the parts: no joined copy
            else:
                parts = [b"".join(parts)]
                sent = sock.send(parts[0])
        except BlockingIOError:
            sent = 0
        except OSError as e:
            raise LegacyConnectionError("{}: write failed: {}".format(self.name, e)) from e
        if sent < total:
            self._send_rest(sock, memoryview(b"".join(parts))[sent:], timeout)

    def _send_rest(self, sock: socket.socket, rest: memoryview, timeout: float) -> None:
        """Writes what the first send() left as the peer reads, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(rest):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LegacyTimeoutError("{}: could not write for {:g} s: the peer stopped reading"
                                         .format(self.name, timeout))
            try:
                _, writable, _ = select.select([], [sock], [], remaining)
                if writable:
                    rest = rest[sock.send(rest):]
            except BlockingIOError:
                pass
            except OSError as e:
                raise LegacyConnectionError("{}: write failed: {}".format(self.name, e)) from e

    def recv(self, timeout: float) -> bytes:
        """Reads one message (b"" for a zero-length one).

        Raises:
            LegacyTimeoutError: no complete message within ``timeout`` seconds.
            LegacyConnectionError: the peer closed the connection.
            LegacyProtocolError: a length beyond ``max_message``.
        """
        message = self._take()
        if message is not None:
            return message
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LegacyTimeoutError("{}: no message within {:g} s".format(self.name, timeout))
            self._fill(remaining)
            message = self._take()
            if message is not None:
                return message

    def poll(self) -> Optional[bytes]:
        """A message if one has fully arrived, else None; never blocks."""
        message = self._take()
        if message is None:
            self._fill(0.0)
            message = self._take()
        return message

    def readable(self) -> bool:
        """Whether a read would return at once (data, or the peer's close); never blocks."""
        if self._end - self._start:
            return True
        ready, _, _ = select.select([self._live()], [], [], 0)
        return bool(ready)

    def buffered(self) -> Optional[bytes]:
        """A message already read from the socket, else None; no system call."""
        return self._take()

    def _take(self) -> Optional[bytes]:
        start = self._start
        available = self._end - start
        if available < 4:
            return None
        length = _LENGTH.unpack_from(self._buffer, start)[0]
        if length > self.max_message:
            self.close()
            raise LegacyProtocolError("{}: message of {} bytes exceeds the limit of {}".format(
                self.name, length, self.max_message))
        if available < 4 + length:
            return None
        end = start + 4 + length
        message = bytes(self._view[start + 4:end])
        if end == self._end:
            self._start = self._end = 0
        else:
            self._start = end
        return message

    def _reserve(self) -> None:
        """Frees room after the unread bytes: at least _MIN_ROOM, or the rest of a long message."""
        start, end, size = self._start, self._end, len(self._buffer)
        unread = end - start
        want = _MIN_ROOM
        if unread >= 4:  # _take() has checked this length against max_message
            want = max(want, 4 + _LENGTH.unpack_from(self._buffer, start)[0] - unread)
        if size - end >= want:
            return
        if size - unread >= want:  # moving the unread bytes to the front makes room
            self._view[:unread] = bytes(self._view[start:end])
        else:
            grown = bytearray(max(2 * size, unread + want))
            grown[:unread] = self._view[start:end]
            self._buffer, self._view = grown, memoryview(grown)
        self._start, self._end = 0, unread

    def _fill(self, timeout: float) -> None:
        """Reads what has arrived, waiting up to ``timeout`` seconds for something to arrive."""
        sock = self._live()
        try:
            if timeout > 0:
                ready, _, _ = select.select([sock], [], [], timeout)
                if not ready:
                    return
            self._reserve()
            received = sock.recv_into(self._view[self._end:])
        except BlockingIOError:
            return
        except OSError as e:
            raise LegacyConnectionError("{}: read failed: {}".format(self.name, e)) from e
        if not received:
            raise LegacyConnectionError("{}: connection closed by the peer".format(self.name))
        self._end += received

    def close(self) -> None:
        """Closes the connection. Idempotent."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buffer = bytearray()
                self._view = memoryview(self._buffer)
                self._start = self._end = 0

    def __enter__(self) -> "FramedSocket":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
