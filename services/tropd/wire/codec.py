"""Numpy arrays <-> the proto `Tensor` message: raw little-endian bytes, dtype enum, shape.

Light on purpose (numpy and the generated stubs only, no torch): the client imports it. Decoding
is zero-copy (`numpy.frombuffer` over the message bytes, so the result is read-only) on
little-endian hosts; on a big-endian host numpy byteswaps when the caller converts to native.
Every decoding problem raises `ValueError` with a message naming the field; the server maps that
to INVALID_ARGUMENT.
"""

from __future__ import annotations

import math

import numpy as np

from tropd.wire.v1 import teacher_pb2 as pb

# Wire dtype of each enum value: always little-endian, whatever the host.
_WIRE_DTYPES: dict[int, np.dtype] = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_INT32: np.dtype("<i4"),
}
_ENUM_BY_KIND: dict[str, int] = {
    "f4": pb.DTYPE_FLOAT32,
    "f2": pb.DTYPE_FLOAT16,
    "i4": pb.DTYPE_INT32,
}


def dtype_name(enum: int) -> str:
    """Readable name of a DType enum value, e.g. "DTYPE_FLOAT32" (or the number if unknown)."""
    try:
        return pb.DType.Name(enum)
    except ValueError:
        return str(enum)


def numpy_dtype(enum: int) -> np.dtype:
    """Little-endian numpy dtype for a DType enum value.

    Args:
        enum: a `pb.DType` value.
    Returns:
        The wire numpy dtype ('<f4', '<f2' or '<i4').
    Raises:
        ValueError: DTYPE_UNSPECIFIED or an unknown value.
    """
    try:
        return _WIRE_DTYPES[enum]
    except KeyError:
        known = ", ".join(dtype_name(k) for k in _WIRE_DTYPES)
        raise ValueError(f"unsupported tensor dtype {dtype_name(enum)}; known: {known}") from None


def dtype_enum(dtype: np.dtype | type | str) -> int:
    """DType enum value for a numpy dtype (any byte order).

    Args:
        dtype: float32, float16 or int32, as a numpy dtype, type or string.
    Returns:
        The matching `pb.DType` value.
    Raises:
        ValueError: any other dtype.
    """
    dt = np.dtype(dtype)
    key = f"{dt.kind}{dt.itemsize}"
    if key not in _ENUM_BY_KIND:
        raise ValueError(f"unsupported array dtype {dt}; supported: float32, float16, int32")
    return _ENUM_BY_KIND[key]


def to_tensor(array: np.ndarray, dtype: np.dtype | type | str | int | None = None) -> pb.Tensor:
    """Encode an array as a `Tensor`: little-endian row-major bytes plus dtype and shape.

    Args:
        array: any array-like; converted (with a copy only where needed) to the wire dtype.
        dtype: wire dtype as a numpy dtype or a `pb.DType` value; None keeps the array's dtype
            (which must then be float32, float16 or int32).
    Returns:
        The message.
    Raises:
        ValueError: unsupported dtype, a float array requested as int32, or integers outside
            the int32 range.
    """
    arr = np.asarray(array)
    if dtype is None:
        enum = dtype_enum(arr.dtype)
    elif isinstance(dtype, bool):  # an int subclass, but never meant as a DType value
        raise ValueError(f"unsupported dtype {dtype!r}; supported: float32, float16, int32")
    elif isinstance(dtype, int):
        enum = int(dtype)
    else:
        enum = dtype_enum(dtype)
    wire = numpy_dtype(enum)
    if wire.kind == "i" and arr.dtype.kind not in "iub":
        raise ValueError(f"refusing to encode a {arr.dtype} array as int32 (would truncate)")
    safe_int = arr.dtype.kind == "b" or (arr.dtype.kind == "i" and arr.dtype.itemsize <= 4)
    if wire.kind == "i" and arr.size and not safe_int:
        info = np.iinfo(wire)
        if arr.min() < info.min or arr.max() > info.max:
            raise ValueError(f"values outside the int32 range cannot be encoded ({arr.dtype})")
    data = np.ascontiguousarray(arr, dtype=wire).tobytes()
    return pb.Tensor(dtype=pb.DType.ValueType(enum), shape=list(arr.shape), data=data)


def from_tensor(
    t: pb.Tensor,
    expected_dtype: int | None = None,
    expected_ndim: int | None = None,
    field: str = "ids",
) -> np.ndarray:
    """Decode a `Tensor` into a read-only numpy array viewing the message bytes.

    Args:
        t: the message.
        expected_dtype: a `pb.DType` value the tensor must carry, or None for any known dtype.
        expected_ndim: number of dimensions the tensor must have, or None for any.
        field: name used in error messages (e.g. "items[3].ids").
    Returns:
        Array of the wire dtype (little-endian) and the message's shape.
    Raises:
        ValueError: unknown or unexpected dtype, wrong rank, negative dimension, or a byte
            length that does not match prod(shape) * itemsize.
    """
    if t.dtype not in _WIRE_DTYPES:
        known = ", ".join(dtype_name(k) for k in _WIRE_DTYPES)
        raise ValueError(f"{field}: unsupported dtype {dtype_name(t.dtype)}; known: {known}")
    if expected_dtype is not None and t.dtype != expected_dtype:
        raise ValueError(
            f"{field}: dtype {dtype_name(t.dtype)}, expected {dtype_name(expected_dtype)}"
        )
    shape = tuple(int(d) for d in t.shape)
    if expected_ndim is not None and len(shape) != expected_ndim:
        raise ValueError(
            f"{field}: shape {list(shape)} has {len(shape)} dims, expected {expected_ndim}"
        )
    if any(d < 0 for d in shape):
        raise ValueError(f"{field}: negative dimension in shape {list(shape)}")
    wire = _WIRE_DTYPES[t.dtype]
    expected_bytes = math.prod(shape) * wire.itemsize
    if len(t.data) != expected_bytes:
        raise ValueError(
            f"{field}: {len(t.data)} data bytes, expected {expected_bytes} "
            f"(shape {list(shape)} x {wire.itemsize} bytes of {dtype_name(t.dtype)})"
        )
    return np.frombuffer(t.data, dtype=wire).reshape(shape)
