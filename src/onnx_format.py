"""Read and write the few parts of ONNX files the bundle needs, without the ``onnx`` package.

ChimeraX does not ship ``onnx``, and declaring it would let pip upgrade ChimeraX's pinned numpy (``onnx`` pulls
``ml_dtypes``, which needs numpy >= 2).  An ONNX file is a protocol-buffer ``ModelProto``; the bundle only needs its
``metadata_props`` (the DEFMap JSON), the graph's nodes and constant tensors (to recognise a chain of convolutions,
``sparse.conv_chain``), and to write small MatMul graphs that onnxruntime runs.  Field numbers follow onnx/onnx.proto
(proto2: repeated numbers may come packed or unpacked; both are read).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# TensorProto.DataType -> numpy dtype (the types a DEFMap network can hold)
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
          10: np.float16, 11: np.float64}
FLOAT = 1


class OnnxFormatError(ValueError):
    """The bytes are not an ONNX model this reader understands."""


# ----------------------------------------------------------------------------------------------------------- reading
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise OnnxFormatError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise OnnxFormatError("varint too long")


def _fields(buf: bytes):
    """(field number, wire type, value) of each field; value is an int, or bytes for length-delimited fields."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wt == 2:
            ln, i = _varint(buf, i)
            v, i = buf[i:i + ln], i + ln
        elif wt == 5:
            v, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise OnnxFormatError(f"unsupported wire type {wt}")
        if i > n:
            raise OnnxFormatError("truncated field")
        yield num, wt, v


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _ints(wt: int, v) -> list[int]:
    """A repeated integer field's values from one occurrence (packed or not)."""
    if wt == 0:
        return [_signed(v)]
    out, i = [], 0
    while i < len(v):
        x, i = _varint(v, i)
        out.append(_signed(x))
    return out


def _floats(wt: int, v) -> list[float]:
    if wt == 5:
        return [struct.unpack("<f", v.to_bytes(4, "little"))[0]]
    return list(struct.unpack(f"<{len(v) // 4}f", v))


@dataclass
class Node:
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict = field(default_factory=dict)  # name -> int, float, bytes, ndarray or list


@dataclass
class Graph:
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]


def _tensor(buf: bytes) -> tuple[str, np.ndarray]:
    dims: list[int] = []
    dtype, name, raw = 0, "", None
    floats: list[float] = []
    ints: list[int] = []
    doubles: list[float] = []
    for num, wt, v in _fields(buf):
        if num == 1:
            dims += _ints(wt, v)
        elif num == 2:
            dtype = v
        elif num == 4:
            floats += _floats(wt, v)
        elif num in (5, 7):
            ints += _ints(wt, v)
        elif num == 8:
            name = v.decode()
        elif num == 9:
            raw = v
        elif num == 10:
            packed = v if wt == 2 else v.to_bytes(8, "little")
            doubles += list(struct.unpack(f"<{len(packed) // 8}d", packed))
        elif num == 14 and v == 1:
            raise OnnxFormatError(f"tensor {name} keeps its data in an external file")
    if dtype not in DTYPES:
        raise OnnxFormatError(f"tensor {name} has unsupported data type {dtype}")
    dt = np.dtype(DTYPES[dtype])
    if raw is not None:
        arr = np.frombuffer(raw, dtype=dt.newbyteorder("<")).astype(dt)
    elif dtype in (1, 11):
        arr = np.asarray(floats if dtype == 1 else doubles, dtype=dt)
    elif dtype == 10:  # float16 values travel as int32 bit patterns
        arr = np.asarray(ints, dtype=np.uint16).view(np.float16)
    else:
        arr = np.asarray(ints, dtype=dt)
    count = int(np.prod(dims)) if dims else 1
    if arr.size != count:
        raise OnnxFormatError(f"tensor {name} holds {arr.size} values for shape {dims}")
    return name, arr.reshape(dims)


def _attribute(buf: bytes):
    name, value = "", None
    ints: list[int] = []
    floats: list[float] = []
    for num, wt, v in _fields(buf):
        if num == 1:
            name = v.decode()
        elif num == 2:
            value = _floats(wt, v)[0]
        elif num == 3:
            value = _signed(v)
        elif num == 4:
            value = v
        elif num == 5:
            value = _tensor(v)[1]
        elif num == 7:
            floats += _floats(wt, v)
        elif num == 8:
            ints += _ints(wt, v)
    if ints:
        value = ints
    elif floats:
        value = floats
    return name, value


def _node(buf: bytes) -> Node:
    node = Node("", [], [])
    for num, _, v in _fields(buf):
        if num == 1:
            node.inputs.append(v.decode())
        elif num == 2:
            node.outputs.append(v.decode())
        elif num == 4:
            node.op_type = v.decode()
        elif num == 5:
            k, val = _attribute(v)
            node.attributes[k] = val
    return node


def _value_info_name(buf: bytes) -> str:
    return next((v.decode() for num, _, v in _fields(buf) if num == 1), "")


def _graph(buf: bytes) -> Graph:
    g = Graph([], {}, [], [])
    for num, _, v in _fields(buf):
        if num == 1:
            g.nodes.append(_node(v))
        elif num == 5:
            name, arr = _tensor(v)
            g.initializers[name] = arr
        elif num == 11:
            g.inputs.append(_value_info_name(v))
        elif num == 12:
            g.outputs.append(_value_info_name(v))
    return g


def _model_fields(path: str | Path):
    try:
        buf = Path(path).read_bytes()
    except OSError as e:
        raise OnnxFormatError(f"cannot read {Path(path).name}: {e.strerror or e}") from None
    try:
        fields = list(_fields(buf))
    except (IndexError, struct.error) as e:
        raise OnnxFormatError(f"not a protocol buffer ({e})") from None
    if not any(num == 7 and wt == 2 for num, wt, _ in fields):
        raise OnnxFormatError("no graph")
    return fields


def read_metadata(path: str | Path) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict (the graph is not decoded)."""
    props = {}
    for num, wt, v in _model_fields(path):
        if num == 14 and wt == 2:
            kv = {n: val.decode() for n, _, val in _fields(v) if n in (1, 2)}
            props[kv.get(1, "")] = kv.get(2, "")
    return props


def read_graph(path: str | Path) -> Graph:
    """The model's main graph: nodes, constant tensors, input and output names."""
    for num, wt, v in _model_fields(path):
        if num == 7 and wt == 2:
            try:
                return _graph(v)
            except (IndexError, struct.error, UnicodeDecodeError) as e:
                raise OnnxFormatError(f"malformed graph ({e})") from None
    raise OnnxFormatError("no graph")


# ----------------------------------------------------------------------------------------------------------- writing
def _key(num: int, wt: int) -> bytes:
    return _enc_varint(num << 3 | wt)


def _enc_varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _len(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _enc_varint(len(payload)) + payload


def _str(num: int, s: str) -> bytes:
    return _len(num, s.encode())


def _int(num: int, v: int) -> bytes:
    return _key(num, 0) + _enc_varint(v)


def tensor_proto(name: str, arr: np.ndarray) -> bytes:
    a = np.ascontiguousarray(arr, dtype="<f4")
    return b"".join([*(_int(1, d) for d in a.shape), _int(2, FLOAT), _str(8, name), _len(9, a.tobytes())])


def _value_info(name: str, dims: list[int | str]) -> bytes:
    dim_bytes = b"".join(_len(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor_type = _int(1, FLOAT) + _len(2, dim_bytes)
    return _str(1, name) + _len(2, _len(1, tensor_type))


def node_proto(op_type: str, inputs: list[str], outputs: list[str], **float_attrs: float) -> bytes:
    attrs = b"".join(_len(5, _str(1, k) + _key(2, 5) + struct.pack("<f", v) + _int(20, 1))  # type FLOAT
                     for k, v in float_attrs.items())
    return b"".join([*(_str(1, i) for i in inputs), *(_str(2, o) for o in outputs), _str(4, op_type), attrs])


def model_bytes(nodes: list[bytes], initializers: list[bytes], inputs: list[tuple[str, list]],
                outputs: list[tuple[str, list]], opset: int = 17, ir_version: int = 8) -> bytes:
    """A float32 ONNX model (default domain) from encoded nodes and tensors; inputs/outputs are (name, dims)."""
    graph = b"".join([*(_len(1, n) for n in nodes), _str(2, "graph"), *(_len(5, t) for t in initializers),
                      *(_len(11, _value_info(n, d)) for n, d in inputs),
                      *(_len(12, _value_info(n, d)) for n, d in outputs)])
    return _int(1, ir_version) + _len(8, _str(1, "") + _int(2, opset)) + _len(7, graph)
