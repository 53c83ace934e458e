"""wire: numpy <-> proto Tensor round trips, the errors a bad message must raise, and the value
types' conversions to and from their messages."""

from __future__ import annotations

import numpy as np
import pytest

from tropd.wire import codec as wire
from tropd.wire import types
from tropd.wire.v1 import teacher_pb2 as pb


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32])
@pytest.mark.parametrize("shape", [(0,), (5,), (3, 4), (2, 3, 4)])
def test_round_trip(dtype: type, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    t = wire.to_tensor(array)
    assert list(t.shape) == list(shape)
    assert t.dtype == wire.dtype_enum(dtype)
    back = wire.from_tensor(pb.Tensor.FromString(t.SerializeToString()), field="x")
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_bytes_are_little_endian_row_major() -> None:
    array = np.array([[1, 2], [3, 256]], dtype=np.int32)
    t = wire.to_tensor(array)
    assert t.data == np.array([1, 2, 3, 256], dtype="<i4").tobytes()
    assert t.data[12:16] == b"\x00\x01\x00\x00"


def test_big_endian_input_is_swapped_on_encode() -> None:
    array = np.array([1.5, -2.0], dtype=">f4")
    t = wire.to_tensor(array)
    assert t.dtype == pb.DTYPE_FLOAT32
    assert t.data == np.array([1.5, -2.0], dtype="<f4").tobytes()


def test_non_contiguous_input() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T
    np.testing.assert_array_equal(wire.from_tensor(wire.to_tensor(array)), array)


def test_decode_is_zero_copy_view() -> None:
    t = wire.to_tensor(np.arange(6, dtype=np.float32))
    back = wire.from_tensor(t)
    assert not back.flags.writeable  # a view over the message bytes, not a copy
    assert back.dtype == np.dtype("<f4")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float16_conversion() -> None:
    values = np.array([0.1, -3.25, 1e-3, 70000.0], dtype=np.float32)
    t = wire.to_tensor(values, dtype=np.float16)
    assert t.dtype == pb.DTYPE_FLOAT16
    assert len(t.data) == 2 * values.size
    back = wire.from_tensor(t, expected_dtype=pb.DTYPE_FLOAT16)
    np.testing.assert_array_equal(back, values.astype(np.float16))
    assert np.isinf(back[-1])  # above float16 range, as numpy converts it


def test_dtype_given_as_enum() -> None:
    t = wire.to_tensor(np.array([1, 2, 3], dtype=np.int64), dtype=pb.DTYPE_INT32)
    assert t.dtype == pb.DTYPE_INT32
    np.testing.assert_array_equal(wire.from_tensor(t), [1, 2, 3])


def test_enum_numpy_mapping() -> None:
    for enum, name in [
        (pb.DTYPE_FLOAT32, "<f4"),
        (pb.DTYPE_FLOAT16, "<f2"),
        (pb.DTYPE_INT32, "<i4"),
    ]:
        assert wire.numpy_dtype(enum) == np.dtype(name)
        assert wire.dtype_enum(np.dtype(name)) == enum
        assert wire.dtype_enum(np.dtype(name).newbyteorder(">")) == enum


def test_bad_length_names_field_and_sizes() -> None:
    t = pb.Tensor(dtype=pb.DTYPE_INT32, shape=[4], data=b"\x00" * 15)
    with pytest.raises(ValueError, match=r"items\[2\]\.ids: 15 data bytes, expected 16"):
        wire.from_tensor(t, field="items[2].ids")


@pytest.mark.parametrize("dtype", [pb.DTYPE_UNSPECIFIED, 42])
def test_unknown_dtype(dtype: int) -> None:
    t = pb.Tensor(dtype=dtype, shape=[1], data=b"\x00" * 4)
    with pytest.raises(ValueError, match="ids: unsupported dtype"):
        wire.from_tensor(t)


def test_unexpected_dtype_and_rank() -> None:
    t = wire.to_tensor(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="DTYPE_FLOAT32, expected DTYPE_INT32"):
        wire.from_tensor(t, expected_dtype=pb.DTYPE_INT32)
    with pytest.raises(ValueError, match="has 2 dims, expected 1"):
        wire.from_tensor(t, expected_ndim=1)


def test_negative_dimension() -> None:
    t = pb.Tensor(dtype=pb.DTYPE_INT32, shape=[-1], data=b"")
    with pytest.raises(ValueError, match="negative dimension"):
        wire.from_tensor(t)


def test_encode_rejects_unsupported_and_lossy() -> None:
    with pytest.raises(ValueError, match="unsupported array dtype float64"):
        wire.to_tensor(np.zeros(2))
    with pytest.raises(ValueError, match="as int32"):
        wire.to_tensor(np.zeros(2, dtype=np.float32), dtype=np.int32)
    with pytest.raises(ValueError, match="int32 range"):
        wire.to_tensor(np.array([2**40]), dtype=np.int32)


def test_value_types_round_trip_through_their_messages() -> None:
    """Each `tropd.wire.types` value survives to_proto -> bytes -> from_proto, as the server
    writes it and the client reads it back."""
    caps = types.Capabilities(top_k=False, generate=False)
    limits = types.Limits(100, 64, 8, 4, 200, 16, caps)
    info = pb.ModelInfo(model_id="m", **limits.model_info_fields())
    back = pb.ModelInfo.FromString(info.SerializeToString())
    assert types.Limits.from_model_info(back) == limits
    assert back.vocab_size == 100 and back.max_new_tokens == 16 and not back.capabilities.top_k

    timing = types.Timing(queue_seconds=0.25, compute_seconds=1.5)
    assert types.Timing.from_proto(timing.to_proto()) == timing

    scored = types.ScoredSequence(
        logprobs=np.array([-1.0, -2.0], np.float32),
        topk_ids=np.array([[3, 4], [5, 6]], np.int32),
        topk_logprobs=np.array([[-0.5, -1.0], [-0.25, -3.0]], np.float32),
        entropy=np.array([0.5, 0.75], np.float32),
    )
    message = pb.ScoreResult.FromString(scored.to_proto(np.dtype(np.float16)).SerializeToString())
    decoded = types.ScoredSequence.from_proto(message)
    assert decoded.logprobs.dtype == np.float16 and decoded.entropy.dtype == np.float32
    np.testing.assert_array_equal(decoded.logprobs, scored.logprobs)
    np.testing.assert_array_equal(decoded.topk_ids, scored.topk_ids)
    assert decoded.candidate_logprobs is None and decoded.rank is None

    generation = types.Generation(np.array([7, 2], np.int32), np.array([-0.5, -1.0]), "stop")
    back_gen = types.Generation.from_proto(generation.to_proto(np.dtype(np.float32)))
    np.testing.assert_array_equal(back_gen.ids, generation.ids)
    assert back_gen.logprobs.dtype == np.float32 and back_gen.finish_reason == "stop"
