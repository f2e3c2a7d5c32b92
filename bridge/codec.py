"""Message encoding: a msgpack header frame plus raw array buffers, never pickle.

A message is a msgpack map. ndarrays anywhere inside it are replaced by msgpack extension values:

* ``EXT_INLINE`` (2): small arrays, ``[dtype, shape, bytes]`` inside the header itself;
* ``EXT_FRAME`` (1): large arrays, ``[dtype, shape, index]``; the bytes travel zero-copy as frame
  ``1 + index`` of the same multipart message;
* ``EXT_SHM`` (3): ``[dtype, shape, offset]`` into the session's shared-memory slot (bridge/shm.py).

dtypes travel as numpy ``dtype.str`` ("<f4", "|u1", "|b1") and must be bool, int, uint, float or complex
(no long double):
object and structured dtypes are refused on both sides, which is what keeps the format pickle-free.
docs/PROTOCOL.md has the byte-level description.
"""
import re
from typing import Any, Callable, Dict, List, Optional, Sequence

import msgpack
import numpy as np

from bridge.errors import MessageTooLargeError, ProtocolError, quote, truncate
from bridge.protocol import DEFAULT_INLINE_LIMIT, DEFAULT_MAX_MESSAGE_BYTES

EXT_FRAME = 1
EXT_INLINE = 2
EXT_SHM = 3

#: the portable dtypes: explicit byte order ("=" means the sender's, which the receiver cannot know)
#: and no long double (f16, c32), whose layout differs between platforms.
_WIRE_DTYPE = re.compile(r"^(\|b1|[<>|][iu][1248]|[<>]f[248]|[<>]c(8|16))$")
#: the largest number of dimensions an array on the wire may have.
MAX_NDIM = 8

# Callable(array) -> offset into the shared-memory slot, or None when the array does not fit.
ShmWriter = Callable[[np.ndarray], Optional[int]]
# Callable(dtype, shape, offset) -> ndarray view into shared memory.
ShmReader = Callable[[np.dtype, tuple, int], np.ndarray]


def check_array_dtype(dtype: np.dtype) -> None:
    """Raises ProtocolError unless ``dtype`` may travel on the wire (no objects, no structs)."""
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(
            "arrays of dtype {} cannot be sent: only bool, integer, float and complex arrays travel "
            "on the wire (object arrays would need pickle, which the bridge never uses)".format(dtype))


#: dtypes already checked, by wire string: at most the few dozen strings _WIRE_DTYPE accepts.
_CHECKED_DTYPES = {}  # type: Dict[str, np.dtype]


def _wire_dtype(text: Any) -> np.dtype:
    if type(text) is str:  # every reply repeats the same few dtypes: check each once
        dtype = _CHECKED_DTYPES.get(text)
        if dtype is not None:
            return dtype
    if not isinstance(text, str) or not _WIRE_DTYPE.match(text):
        raise ProtocolError("bad array dtype on the wire: {}".format(quote(text)))
    try:
        dtype = np.dtype(text)
    except TypeError as e:
        raise ProtocolError("bad array dtype on the wire: {}".format(quote(text))) from e
    check_array_dtype(dtype)
    _CHECKED_DTYPES[text] = dtype
    return dtype


def _wire_shape(shape: Any) -> tuple:
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(d, int) and 0 <= d < 2 ** 40 for d in shape)):
        raise ProtocolError("bad array shape on the wire: {}".format(quote(shape)))
    return tuple(shape)


def _nbytes(dtype: np.dtype, shape: tuple) -> int:
    count = 1
    for d in shape:
        count *= d
    return count * dtype.itemsize


def _unpack_small(data: bytes) -> Any:
    """Unpacks an extension value's own msgpack payload (a short list)."""
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise ProtocolError("malformed array descriptor: {}".format(e)) from e


class Encoder(object):
    """Turns one message into frames. Not thread-safe; make one per socket.

    Args:
        inline_limit: arrays smaller than this many bytes go inline in the header.
        shm_writer: when given, arrays of at least ``shm_limit`` bytes are offered to it first.
        shm_limit: see ``shm_writer``.
    """

    def __init__(self, inline_limit: int = DEFAULT_INLINE_LIMIT) -> None:
        self.inline_limit = inline_limit
        self._frames = []  # type: List[Any]
        self._shm_writer = None  # type: Optional[ShmWriter]
        self._shm_limit = 0
        # Reused packers: msgpack.packb builds a new buffer per call, which shows in small messages.
        self._packer = msgpack.Packer(use_bin_type=True, default=self._default)
        self._descriptor_packer = msgpack.Packer(use_bin_type=True)

    def encode(self, message: Any, shm_writer: Optional[ShmWriter] = None,
               shm_limit: int = 0) -> List[Any]:
        """Returns ``[header_bytes, buffer, ...]``, ready for ``send_multipart(copy=False)``.

        Raises:
            ProtocolError: the message holds something msgpack cannot carry (or an object array).
        """
        self._frames = []
        self._shm_writer, self._shm_limit = shm_writer, shm_limit
        try:
            header = self._packer.pack(message)
        except ProtocolError:
            self._packer.reset()
            raise
        except (TypeError, ValueError, OverflowError) as e:
            self._packer.reset()
            raise ProtocolError("cannot encode message: {}".format(e)) from e
        frames, self._frames = [header] + self._frames, []
        return frames

    def _default(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return self._array(obj)
        if isinstance(obj, np.generic):  # numpy scalars become plain msgpack scalars
            check_array_dtype(obj.dtype)
            return obj.item()
        if isinstance(obj, tuple):
            return list(obj)
        raise TypeError("cannot serialize {} (only maps, lists, scalars, str, bytes and "
                        "ndarrays travel on the wire)".format(type(obj).__name__))

    def _array(self, array: np.ndarray) -> msgpack.ExtType:
        check_array_dtype(array.dtype)
        if not array.flags.c_contiguous:
            array = array.copy(order="C")  # (np.ascontiguousarray would turn 0-d into 1-d)
        dtype, shape = array.dtype.str, list(array.shape)
        if self._shm_writer is not None and array.nbytes >= self._shm_limit:
            offset = self._shm_writer(array)
            if offset is not None:
                return msgpack.ExtType(EXT_SHM, self._descriptor_packer.pack([dtype, shape, offset]))
        if array.nbytes < self.inline_limit:
            return msgpack.ExtType(EXT_INLINE, self._descriptor_packer.pack(
                [dtype, shape, array.tobytes()]))
        self._frames.append(array)  # zero-copy: pyzmq keeps a reference until sent
        return msgpack.ExtType(EXT_FRAME, self._descriptor_packer.pack(
            [dtype, shape, len(self._frames) - 1]))


def frames_size(frames: Sequence[Any]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


def decode(frames: Sequence[Any], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
           shm_reader: Optional[ShmReader] = None) -> Any:
    """Rebuilds a message from ``[header, buffer, ...]`` (bytes, memoryviews or zmq Frames).

    Arrays from frames are read-only views of the received buffers (no copy).

    Raises:
        MessageTooLargeError: the frames together exceed ``max_message_bytes``.
        ProtocolError: garbage, truncated or inconsistent frames, forbidden dtypes, unused frames.
    """
    if not frames:
        raise ProtocolError("empty message")
    buffers = [memoryview(f) for f in frames]
    total = sum(b.nbytes for b in buffers)
    if total > max_message_bytes:
        raise MessageTooLargeError("message of {} bytes exceeds the limit of {} bytes".format(
            total, max_message_bytes))
    used = set()
    # msgpack 1.0.5 (the last release for Python 3.6) leaks about 640 bytes whenever ext_hook raises,
    # so the hook never raises: it records the first problem, returns None, and decode raises after
    # unpacking has finished.
    problems = []  # type: List[ProtocolError]

    def array_from_ext(code: int, data: bytes) -> Any:
        fields = _unpack_small(data)
        if not isinstance(fields, list) or len(fields) != 3:
            raise ProtocolError("malformed array descriptor: {}".format(quote(fields)))
        dtype, shape = _wire_dtype(fields[0]), _wire_shape(fields[1])
        nbytes = _nbytes(dtype, shape)
        if code == EXT_INLINE:
            raw = fields[2]
            if not isinstance(raw, bytes) or len(raw) != nbytes:
                raise ProtocolError("inline array: expected {} bytes for {}{}, got {}".format(
                    nbytes, dtype, shape, quote(raw, 40)))
            return np.frombuffer(raw, dtype=dtype).reshape(shape)
        if code == EXT_FRAME:
            index = fields[2]
            if not isinstance(index, int) or not 0 <= index < len(buffers) - 1:
                raise ProtocolError("array refers to frame {} but the message has {} array "
                                    "frame(s)".format(quote(index), len(buffers) - 1))
            if index in used:
                raise ProtocolError("array frame {} referenced twice".format(index))
            used.add(index)
            buf = buffers[1 + index]
            if buf.nbytes != nbytes:
                raise ProtocolError("array frame {} holds {} bytes but {}{} needs {} (truncated "
                                    "frame?)".format(index, buf.nbytes, dtype, shape, nbytes))
            array = np.frombuffer(buf, dtype=dtype).reshape(shape)
            array.setflags(write=False)  # a view of the receive buffer: read-only like the others
            return array
        if code == EXT_SHM:
            if shm_reader is None:
                raise ProtocolError("message refers to shared memory, which was not negotiated")
            offset = fields[2]
            if not isinstance(offset, int) or offset < 0:
                raise ProtocolError("bad shared-memory offset {}".format(quote(offset)))
            return shm_reader(dtype, shape, offset)
        raise ProtocolError("unknown msgpack extension type {}".format(code))

    def ext_hook(code: int, data: bytes) -> Any:
        if problems:
            return None  # the message is rejected anyway: skip the work
        try:
            return array_from_ext(code, data)
        except ProtocolError as e:
            problems.append(e)
        except Exception as e:  # numpy or a shm reader failing on hostile input
            problems.append(ProtocolError("bad array: {}: {}".format(type(e).__name__, e)))
        return None

    try:
        message = msgpack.unpackb(buffers[0], raw=False, use_list=True, strict_map_key=True,
                                  ext_hook=ext_hook)
    except Exception as e:  # msgpack raises ValueError, ExtraData, FormatError, StackError, ...
        if problems:
            raise problems[0] from None
        raise ProtocolError("malformed message header ({} bytes): {}: {}".format(
            buffers[0].nbytes, type(e).__name__, truncate(str(e), 200))) from e
    if problems:
        raise problems[0]
    if len(used) != len(buffers) - 1:
        raise ProtocolError("message has {} array frame(s) but the header uses {}".format(
            len(buffers) - 1, len(used)))
    return message


def peek_seq(header: Any) -> Optional[int]:
    """Best effort: the ``seq`` of a request whose full decoding failed, so its error reply can be
    matched by the client. Returns None when it cannot be found among the first keys."""
    try:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=len(header))
        unpacker.feed(header)
        for _ in range(min(unpacker.read_map_header(), 8)):
            if unpacker.unpack() == "seq":
                seq = unpacker.unpack()
                return seq if isinstance(seq, int) and not isinstance(seq, bool) else None
            unpacker.skip()
    except Exception:  # garbage: no seq to recover
        pass
    return None
