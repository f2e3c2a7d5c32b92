"""Codec round trips over dtypes and shapes (property-based); runs under Python 3.6 and 3.11."""
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from bridge.codec import EXT_FRAME, Encoder, decode
from bridge.errors import MessageTooLargeError, ProtocolError

DTYPES = st.one_of(hnp.boolean_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                   hnp.floating_dtypes(), hnp.complex_number_dtypes())
ARRAYS = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))


def roundtrip(message, inline_limit=64 * 1024):
    frames = Encoder(inline_limit=inline_limit).encode(message)
    return decode([bytes(memoryview(f)) for f in frames]), frames


def assert_same_array(got, want):
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()


@settings(max_examples=200, deadline=None)
@given(array=ARRAYS, inline_limit=st.sampled_from([0, 16, 1 << 20]))
def test_arrays_round_trip_bit_exact(array, inline_limit):
    got, frames = roundtrip({"a": array, "nested": [{"b": array}]}, inline_limit)
    assert_same_array(got["a"], array)
    assert_same_array(got["nested"][0]["b"], array)
    expected_frames = 1 if array.nbytes < inline_limit else 3
    assert len(frames) == expected_frames


@settings(max_examples=50, deadline=None)
@given(array=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, max_side=8)))
def test_non_contiguous_arrays_are_sent_as_their_values(array):
    view = array[::-1, ::2]
    got, _ = roundtrip({"v": view}, inline_limit=0)
    assert_same_array(got["v"], view)


@settings(max_examples=100, deadline=None)
@given(value=st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 64 - 1),
              st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=20))
def test_plain_values_round_trip(value):
    got, frames = roundtrip({"x": value})
    assert got == {"x": value}
    assert len(frames) == 1


def test_numpy_scalars_become_plain_scalars():
    got, _ = roundtrip({"f": np.float32(1.5), "i": np.int64(-3), "b": np.bool_(True)})
    assert got == {"f": 1.5, "i": -3, "b": True}


def test_large_arrays_travel_zero_copy_in_their_own_frame():
    image = np.arange(800 * 600 * 4, dtype=np.uint32).astype(np.uint8).reshape(600, 800, 4)
    frames = Encoder().encode({"camera": image})
    assert len(frames) == 2
    assert frames[1] is image  # the array object itself is handed to zmq: no copy
    got = decode([bytes(memoryview(f)) for f in frames])
    assert_same_array(got["camera"], image)
    assert not got["camera"].flags.writeable


@pytest.mark.parametrize("bad", [np.array([object()]), np.array([(1, 2.0)], dtype="i4,f8"),
                                 np.array(["text"])])
def test_object_structured_and_string_arrays_are_refused(bad):
    with pytest.raises(ProtocolError, match="cannot be sent|dtype"):
        Encoder().encode({"bad": bad})


def test_unencodable_objects_raise_protocol_error():
    with pytest.raises(ProtocolError, match="cannot encode"):
        Encoder().encode({"x": object()})


def _ext(code, fields):
    return msgpack.ExtType(code, msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize("header,extra", [
    ({"x": _ext(EXT_FRAME, ["|O", [1], 0])}, [b"\0" * 8]),          # object dtype on the wire
    ({"x": _ext(EXT_FRAME, ["V8", [1], 0])}, [b"\0" * 8]),          # void dtype
    ({"x": _ext(EXT_FRAME, ["<f4", [4], 0])}, [b"\0" * 15]),        # truncated frame
    ({"x": _ext(EXT_FRAME, ["<f4", [4], 1])}, [b"\0" * 16]),        # frame index out of range
    ({"x": _ext(EXT_FRAME, ["<f4", [-1], 0])}, [b""]),              # negative dimension
    ({"x": _ext(2, ["<f4", [2], b"\0" * 7])}, []),                  # short inline array
    ({"x": _ext(3, ["<f4", [2], 64])}, []),                         # shm never negotiated
    ({"x": _ext(9, ["<f4", [2], 0])}, []),                          # unknown extension
    ({"x": 1}, [b"unreferenced frame"]),                            # frame nobody uses
    ({"x": [_ext(1, ["|u1", [1], 0]), _ext(1, ["|u1", [1], 0])]}, [b"\0"]),  # frame used twice
])
def test_inconsistent_messages_are_protocol_errors(header, extra):
    with pytest.raises(ProtocolError):
        decode([msgpack.packb(header, use_bin_type=True)] + extra)


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=200))
def test_garbage_never_escapes_as_anything_but_protocol_error(garbage):
    try:
        decode([garbage])
    except ProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=1, max_value=40))
def test_truncated_headers_are_protocol_errors(cut):
    header = Encoder().encode({"seq": 1, "cmd": "step", "body": {"a": list(range(10))}})[0]
    with pytest.raises(ProtocolError):
        decode([header[:max(0, len(header) - cut)]])


def test_oversized_messages_are_refused_before_decoding():
    with pytest.raises(MessageTooLargeError, match="exceeds the limit"):
        decode([b"\x80", b"x" * 100], max_message_bytes=64)
