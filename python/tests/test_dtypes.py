"""Every dtype, layout and kind of input, through a real server."""

import array

import numpy as np
import pytest

import redstone
from redstone import _convert

from conftest import unique

NUMPY_DTYPES = [
    np.float32, np.float64, np.int32, np.int64, np.uint8, np.float16,
    np.int8, np.int16, np.uint16, np.uint32, np.uint64, np.bool_,
]


@pytest.fixture(scope="module")
def client(server):
    return redstone.Client(server.fast)


def sample(dtype, shape=(3, 5)):
    rng = np.random.default_rng(7)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_numpy_dtype_round_trips(client, dtype):
    key = unique("dtype")
    value = sample(dtype)
    client.put(key, value)
    back = client.get(key)
    assert back.dtype == np.dtype(dtype)
    assert back.shape == value.shape
    assert np.array_equal(back, value, equal_nan=value.dtype.kind == "f")
    out = np.zeros_like(value)
    assert client.get_into(key, out)
    assert out.tobytes() == value.tobytes()


def test_the_dtype_table_matches_the_servers_codes(client):
    # Codes are the wire's; a code the Rust client does not know is refused
    # before anything is sent.
    assert sorted(redstone.NUMPY_DTYPES) == [c for c in range(1, 14) if c != 7]
    assert redstone.DTYPE_NAMES[13] == "BOOL" and redstone.DTYPE_NAMES[7] == "BF16"
    key = unique("badcode")
    with pytest.raises(redstone.InvalidArgumentError, match="dtype"):
        client._native.put(key, 99, [1], 1, np.zeros(1, np.uint8))


def test_bfloat16_round_trips_through_ml_dtypes(client):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    key = unique("bf16")
    value = np.array([[1.5, -2.0, 3.25]], dtype=ml_dtypes.bfloat16)
    client.put(key, value)
    back = client.get(key)
    assert back.dtype == np.dtype(ml_dtypes.bfloat16)
    assert back.tobytes() == value.tobytes() and back.shape == (1, 3)


def test_bfloat16_without_ml_dtypes_says_how_to_get_it(client, monkeypatch):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    key = unique("bf16")
    client.put(key, np.ones(4, dtype=ml_dtypes.bfloat16))
    monkeypatch.setattr(_convert, "bfloat16", lambda: None)
    with pytest.raises(redstone.UnsupportedDtypeError, match="pip install ml_dtypes"):
        client.get(key)


def test_scalars_and_empty_tensors(client):
    for value in [np.float64(3.5), np.array(7, dtype=np.int16), np.zeros((0, 5), np.int8), np.zeros((4, 0, 2), np.float32)]:
        key = unique("edge")
        client.put(key, value)
        back = client.get(key)
        assert isinstance(back, np.ndarray)
        assert back.shape == np.shape(value) and back.dtype == np.asarray(value).dtype
        assert back.tobytes() == np.asarray(value).tobytes()
    key = unique("empty-into")
    client.put(key, np.zeros(0, np.float32))
    assert client.get_into(key, np.zeros(0, np.float32))


def test_fortran_order_is_stored_column_major_without_a_copy(client):
    key = unique("fortran")
    value = np.asfortranarray(np.arange(24, dtype=np.int32).reshape(4, 6))
    client.put(key, value)
    back = client.get(key)
    assert back.flags.f_contiguous and not back.flags.c_contiguous
    assert np.array_equal(back, value)
    code, shape, layout, flat = _convert.to_parts(value)
    assert layout == _convert.COLUMN_MAJOR
    assert np.shares_memory(flat, value), "a Fortran-ordered array was copied"


def test_contiguous_input_is_sent_from_its_own_memory():
    value = np.arange(10, dtype=np.float32)
    _, _, _, flat = _convert.to_parts(value)
    assert np.shares_memory(flat, value)


def test_non_contiguous_input_is_copied_once_to_row_major(client):
    key = unique("strided")
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    value = base[::2, 1::3]
    assert not value.flags.c_contiguous and not value.flags.f_contiguous
    client.put(key, value)
    back = client.get(key)
    assert back.flags.c_contiguous and np.array_equal(back, value)


def test_big_endian_input_is_stored_little_endian(client):
    key = unique("bigendian")
    value = np.arange(6, dtype=">i4").reshape(2, 3)
    client.put(key, value)
    back = client.get(key)
    assert back.dtype == np.dtype("<i4") and np.array_equal(back, value)


def test_buffers_and_dlpack(client):
    key = unique("bytes")
    client.put(key, b"\x01\x02\x03")
    assert client.get(key).tolist() == [1, 2, 3]
    key = unique("array.array")
    client.put(key, array.array("d", [1.0, 2.5]))
    back = client.get(key)
    assert back.dtype == np.float64 and back.tolist() == [1.0, 2.5]

    class Exporter:
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kwargs):
            return self.a.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    key = unique("dlpack")
    client.put(key, Exporter(np.arange(5, dtype=np.int64)))
    assert client.get(key).tolist() == [0, 1, 2, 3, 4]


def test_unsupported_inputs_are_refused_before_sending(client):
    with pytest.raises(redstone.UnsupportedDtypeError, match="complex"):
        client.put(unique("complex"), np.ones(3, np.complex64))
    with pytest.raises(TypeError, match="np.asarray"):
        client.put(unique("list"), [1, 2, 3])


def test_returned_arrays_are_writable_and_own_their_memory(client):
    key = unique("owned")
    client.put(key, np.arange(8, dtype=np.int64))
    a = client.get(key)
    b = client.get(key)
    a[0] = 100
    assert b[0] == 0, "two gets share memory"
    assert a.flags.writeable
    # The memory is the received payload's, not a copy of it.
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert type(base).__name__ == "Payload"


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_array_subclasses(client):
    key = unique("matrix")
    client.put(key, np.matrix([[1, 2], [3, 4]], dtype=np.int32))
    back = client.get(key)
    assert type(back) is np.ndarray and back.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(TypeError, match="masked"):
        client.put(unique("masked"), np.ma.masked_array([1, 2], mask=[0, 1]))
