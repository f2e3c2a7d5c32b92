"""Same-host fast path: large arrays through an mmap'd file under /dev/shm instead of TCP frames.

The server creates one file per session, ``/dev/shm/carla-zmq-bridge-<pid>-<hex>``, laid out as a
64-byte header (magic ``CZBSHM01``, then an 8-byte random token, then zeros) followed by ``SLOTS``
equal slots. Reply number *n* of a session writes its large arrays into slot ``n % SLOTS``; the
client maps the file
read-only and proves it sees the same file (so the same host) by checking the token announced in the
``hello`` reply. With two slots, an array received in reply *n* stays valid while the client sends
request *n+1*; the server overwrites its slot while handling request *n+2*. The client copies when
asked to.

``multiprocessing.shared_memory`` is 3.8+, hence a plain file and ``mmap`` (works on 3.6).
"""
import mmap
import os
import re
import secrets
from typing import Optional

import numpy as np

from bridge.errors import BridgeError, ProtocolError

SHM_DIR = "/dev/shm"
MAGIC = b"CZBSHM01"
HEADER_BYTES = 64
SLOTS = 2
ALIGN = 64
_NAME = re.compile(r"^carla-zmq-bridge-(\d+)-[0-9a-f]+$")


def shm_available() -> bool:
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def remove_stale_files() -> int:
    """Deletes segments left by bridge servers that died (kill -9); returns how many."""
    removed = 0
    if not os.path.isdir(SHM_DIR):
        return 0
    for name in os.listdir(SHM_DIR):
        match = _NAME.match(name)
        if match and not os.path.exists("/proc/{}".format(match.group(1))):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed += 1
            except OSError:
                pass
    return removed


class ShmWriter(object):
    """The server's side: owns the file, hands out offsets in the current slot."""

    def __init__(self, slot_bytes: int) -> None:
        self.slot_bytes = _aligned(max(slot_bytes, ALIGN))
        self.token = secrets.token_hex(8)
        self.path = os.path.join(SHM_DIR, "carla-zmq-bridge-{}-{}".format(os.getpid(), self.token))
        size = HEADER_BYTES + SLOTS * self.slot_bytes
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size, access=mmap.ACCESS_WRITE)
        finally:
            os.close(fd)
        self._map[:HEADER_BYTES] = (MAGIC + bytes.fromhex(self.token)).ljust(HEADER_BYTES, b"\0")
        self._slot_start = HEADER_BYTES
        self._used = 0
        self._replies = 0

    def describe(self) -> dict:
        """What the hello reply announces."""
        return {"path": self.path, "token": self.token, "size": len(self._map),
                "slot_bytes": self.slot_bytes, "slots": SLOTS}

    def begin_reply(self) -> None:
        """Moves to the next slot; call once before encoding each reply."""
        self._slot_start = HEADER_BYTES + (self._replies % SLOTS) * self.slot_bytes
        self._replies += 1
        self._used = 0

    def write(self, array: np.ndarray) -> Optional[int]:
        """Copies ``array`` into the current slot; returns its offset, or None if it does not fit."""
        needed = _aligned(array.nbytes)
        if self._map is None or self._used + needed > self.slot_bytes:
            return None
        offset = self._slot_start + self._used
        target = np.frombuffer(self._map, dtype=np.uint8, count=array.nbytes, offset=offset)
        target[:] = array.reshape(-1).view(np.uint8)
        self._used += needed
        return offset

    def close(self) -> None:
        """Unlinks the file; a client that still maps it keeps its pages until it unmaps. Idempotent."""
        if self._map is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        try:
            self._map.close()
        except BufferError:
            pass  # views still exported: the mapping goes when they are garbage-collected
        self._map = None


class ShmReader(object):
    """The client's side: maps the server's file read-only after checking its token.

    Raises:
        BridgeError: the file is missing or its token differs (the server is on another host).
    """

    def __init__(self, path: str, token: str, size: int) -> None:
        if not _NAME.match(os.path.basename(str(path))) or os.path.dirname(path) != SHM_DIR:
            raise ProtocolError("refusing shared-memory path outside {}: {!r}".format(SHM_DIR, path))
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise BridgeError("shared memory {} not reachable (server on another host?): {}".format(
                path, e)) from e
        try:
            if os.fstat(fd).st_size != size:
                raise BridgeError("shared memory {} has the wrong size".format(path))
            self._map = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        expected = MAGIC + bytes.fromhex(token)
        if self._map[:len(expected)] != expected:
            self.close()
            raise BridgeError("shared memory {} belongs to another server (token mismatch)".format(path))
        self.size = size

    def read(self, dtype: np.dtype, shape: tuple, offset: int) -> np.ndarray:
        """A read-only view of an array the server wrote at ``offset``.

        Raises:
            ProtocolError: the array would lie outside the mapping.
        """
        count = 1
        for d in shape:
            count *= d
        if self._map is None or offset < HEADER_BYTES or offset + count * dtype.itemsize > self.size:
            raise ProtocolError("shared-memory array at {} of {}{} lies outside the {}-byte "
                                "segment".format(offset, dtype, shape, self.size))
        return np.frombuffer(self._map, dtype=dtype, count=count, offset=offset).reshape(shape)

    def close(self) -> None:
        if self._map is None:
            return
        try:
            self._map.close()
        except BufferError:
            pass  # arrays still reference it; it is unmapped when they are garbage-collected
        self._map = None
