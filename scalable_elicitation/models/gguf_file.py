"""A small GGUF reader: metadata as Python values, tensors as read-only byte views of the file.

Written from the GGUF format (little-endian, versions 2 and 3): magic ``GGUF``, uint32 version,
uint64 tensor count, uint64 key-value count; the key-value pairs (string key, uint32 value type,
value); the tensor infos (name, uint32 n_dims, n_dims x uint64 dims, uint32 ggml type, uint64
offset); then the data section at the next multiple of ``general.alignment`` (32 by default), each
tensor at data start + offset. Strings are uint64 length + UTF-8 bytes.

It replaces `gguf.GGUFReader` here because that reader makes a numpy memmap view for every part of
every string: SmolLM2's 49,152 tokens and 48,900 merges cost ~1.2 million views and several seconds
per load. This one reads the header with `struct` and turns each numeric array into one
`np.frombuffer`. `dequantize` has exact numpy versions of Q4_1 and Q8_0 (what the packaged SmolLM2
uses) and hands every other quantised type to `gguf.quants.dequantize`.
"""
from __future__ import annotations

import dataclasses
import mmap
import os
import pathlib
import struct
from typing import Any

import numpy as np

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Metadata value types: code -> (struct of one scalar, numpy dtype of an array of them).
_SCALARS: dict[int, tuple[struct.Struct, np.dtype]] = {
    code: (struct.Struct(fmt), np.dtype(dtype)) for code, fmt, dtype in [
        (0, "<B", "<u1"), (1, "<b", "<i1"), (2, "<H", "<u2"), (3, "<h", "<i2"),
        (4, "<I", "<u4"), (5, "<i", "<i4"), (6, "<f", "<f4"), (7, "<?", "?"),
        (10, "<Q", "<u8"), (11, "<q", "<i8"), (12, "<d", "<f8")]
}
_STRING, _ARRAY = 8, 9

# ggml tensor types: code -> (name, values per block, bytes per block).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 30: ("BF16", 1, 2),
}

_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class GGUFError(ValueError):
    """A file is not a GGUF file that this reader understands; the message names the file."""


class _Truncated(Exception):
    """Internal: a read ran past the end of the file (turned into a GGUFError naming it)."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file.

    shape: as stored, ggml order (fastest-varying dimension first); numpy order is its reverse.
    data: the tensor's raw bytes, a read-only uint8 view of the file shaped
      `[*reversed(shape)[:-1], bytes per row]`, the layout `gguf.quants.dequantize` expects.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # absolute byte offset in the file
    data: np.ndarray

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type][0]


class GGUFFile:
    """The metadata and tensors of one GGUF file, memory-mapped read-only.

    fields: key -> value. Scalars are Python int/float/bool/str; arrays of numbers are numpy
      arrays; arrays of strings are lists of str (arrays of arrays are lists).
    tensors: name -> TensorInfo, in file order.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        with open(self.path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            if self.size < 24:  # magic, version and the two counts
                raise GGUFError(f"{self.path}: truncated GGUF file: {self.size} bytes is shorter "
                                "than the 24-byte header")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse()
        except (_Truncated, struct.error):
            raise GGUFError(f"{self.path}: truncated GGUF file: the header runs past the end of "
                            f"the file ({self.size} bytes)") from None

    def _parse(self) -> None:
        mm = self._mm
        if mm[:4] != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (magic {mm[:4]!r}, expected "
                            f"{GGUF_MAGIC!r})")
        self.version: int = _U32.unpack_from(mm, 4)[0]
        if self.version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"{self.path}: unsupported GGUF version {self.version} (supported: "
                            f"{', '.join(map(str, SUPPORTED_VERSIONS))}; big-endian files are "
                            "not supported)")
        n_tensors, n_kv = struct.unpack_from("<QQ", mm, 8)
        self._pos = 24
        self.fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string("a metadata key")
            (vtype,) = _U32.unpack_from(mm, self._pos)
            self._pos += 4
            if key in self.fields:
                raise GGUFError(f"{self.path}: metadata key {key!r} appears twice")
            self.fields[key] = self._value(vtype, key)

        infos = []
        for _ in range(n_tensors):
            name = self._string("a tensor name")
            (n_dims,) = _U32.unpack_from(mm, self._pos)
            shape = struct.unpack_from(f"<{n_dims}Q", mm, self._pos + 4)
            ggml_type, offset = struct.unpack_from("<IQ", mm, self._pos + 4 + 8 * n_dims)
            self._pos += 4 + 8 * n_dims + 12
            infos.append((name, tuple(int(d) for d in shape), ggml_type, offset))

        alignment = self.fields.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise GGUFError(f"{self.path}: general.alignment is {alignment!r}; expected a "
                            "positive integer")
        data_start = -(-self._pos // alignment) * alignment
        file_bytes = np.frombuffer(mm, np.uint8)
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, ggml_type, offset in infos:
            if name in self.tensors:
                raise GGUFError(f"{self.path}: tensor {name!r} appears twice")
            start = data_start + offset
            rows, row_bytes = self._layout(name, shape, ggml_type)
            end = start + row_bytes * int(np.prod(rows, dtype=np.int64))
            if end > self.size:
                raise GGUFError(f"{self.path}: truncated GGUF file: tensor {name!r} needs bytes "
                                f"{start}..{end} but the file has {self.size}")
            data = file_bytes[start:end].reshape(*rows, row_bytes)
            self.tensors[name] = TensorInfo(name, shape, ggml_type, start, data)
        del self._pos

    def _layout(self, name: str, shape: tuple[int, ...], ggml_type: int
                ) -> tuple[tuple[int, ...], int]:
        """(numpy-order leading dims, bytes per row) of a tensor, checked against its type."""
        if ggml_type not in GGML_TYPES:
            known = ", ".join(t[0] for t in GGML_TYPES.values())
            raise GGUFError(f"{self.path}: tensor {name!r} has ggml type {ggml_type}, which this "
                            f"reader does not support (supported: {known})")
        type_name, block, type_size = GGML_TYPES[ggml_type]
        row = shape[0] if shape else 1
        if row % block:
            raise GGUFError(f"{self.path}: tensor {name!r} of type {type_name} has rows of {row} "
                            f"values, not a multiple of its block size {block}")
        return tuple(reversed(shape[1:])), row // block * type_size

    def _need(self, n: int) -> int:
        """Start of the next `n` bytes, moving past them; raises if the file ends first."""
        start = self._pos
        if start + n > self.size:
            raise _Truncated
        self._pos = start + n
        return start

    def _string(self, what: str) -> str:
        (n,) = _U64.unpack_from(self._mm, self._pos)
        self._pos += 8
        start = self._need(n)
        try:
            return str(self._mm[start:start + n], "utf-8")
        except UnicodeDecodeError as err:
            raise GGUFError(f"{self.path}: {what} at byte {start} is not UTF-8 ({err})") from None

    def _value(self, vtype: int, key: str) -> Any:
        mm = self._mm
        if vtype in _SCALARS:
            fmt = _SCALARS[vtype][0]
            return fmt.unpack_from(mm, self._need(fmt.size))[0]
        if vtype == _STRING:
            return self._string(f"the value of {key!r}")
        if vtype != _ARRAY:
            raise GGUFError(f"{self.path}: metadata {key!r} has unknown value type {vtype}")
        etype, count = struct.unpack_from("<IQ", mm, self._need(12))
        if etype in _SCALARS:
            dtype = _SCALARS[etype][1]
            start = self._need(count * dtype.itemsize)
            return np.frombuffer(mm, dtype, count, start).copy()
        if etype == _STRING:
            return self._strings(count, key)
        return [self._value(etype, key) for _ in range(count)]

    def _strings(self, count: int, key: str) -> list[str]:
        """`count` strings in a row: the hot loop (the tokenizer's tokens and merges)."""
        mm, pos, size, out = self._mm, self._pos, self.size, []
        unpack = _U64.unpack_from
        try:
            for _ in range(count):
                (n,) = unpack(mm, pos)
                pos += 8
                if pos + n > size:
                    raise _Truncated
                out.append(str(mm[pos:pos + n], "utf-8"))
                pos += n
        except UnicodeDecodeError as err:
            raise GGUFError(f"{self.path}: string {len(out)} of {key!r} is not UTF-8 "
                            f"({err})") from None
        self._pos = pos
        return out


def dequantize(info: TensorInfo) -> np.ndarray:
    """A tensor as float32 in numpy order (`reversed(info.shape)`).

    F32 is a read-only view of the file. Q4_1 and Q8_0 are done here, equal bit for bit to
    `gguf.quants.dequantize` (the same float32 products and sums) and ~4x faster, as whole-tensor
    operations instead of groups of 16 rows; other types go to `gguf.quants.dequantize`.
    """
    return _dequantize_rows(info.data, info.ggml_type).reshape(tuple(reversed(info.shape)))


def read_slice(info: TensorInfo, index: tuple[slice, ...]) -> np.ndarray:
    """`dequantize(info)[index]`, touching only the bytes it needs.

    `index` holds one slice of step 1 per numpy axis. Leading axes select rows of the
    memory-mapped file; the last axis selects the quantisation blocks that cover it, so a process
    that holds one shard of a weight reads and dequantises about that shard alone (docs/design.md,
    Model). Blocks are dequantised independently, so the values equal the whole tensor's bit for
    bit.
    """
    shape = tuple(reversed(info.shape))
    if len(index) != len(shape):
        raise ValueError(f"index {index} does not match tensor {info.name!r} of shape {shape}")
    index = tuple(slice(*s.indices(n)) for s, n in zip(index, shape))
    if any(s.step != 1 for s in index):
        raise ValueError(f"index {index} of tensor {info.name!r}: only steps of 1 are read")
    _, block, block_bytes = GGML_TYPES[info.ggml_type]
    last = index[-1]
    first, end = last.start // block, -(-last.stop // block)
    data = info.data[index[:-1] + (slice(first * block_bytes, end * block_bytes),)]
    values = _dequantize_rows(data, info.ggml_type)  # [*rows, (end - first) * block]
    return values[..., last.start - first * block:last.stop - first * block]


def _dequantize_rows(data: np.ndarray, ggml_type: int) -> np.ndarray:
    """float32 values of raw bytes shaped `[*rows, bytes]` (whole blocks): `[*rows, values]`."""
    rows = data.shape[:-1]
    if ggml_type == 0:  # F32
        out = data.view(np.float32)
    elif ggml_type == 1:  # F16
        out = data.view(np.float16).astype(np.float32)
    elif ggml_type == 3:  # Q4_1: f16 scale d, f16 minimum m, 16 bytes of 4-bit q; d*q + m
        blocks = data.reshape(-1, 20)
        d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # [N, 1]
        m = blocks[:, 2:4].view(np.float16).astype(np.float32)  # [N, 1]
        qs = blocks[:, 4:]  # [N, 16]; low nibbles are values 0..15, high nibbles 16..31
        q = np.empty((len(blocks), 2, 16), np.float32)
        np.bitwise_and(qs, 15, out=q[:, 0], casting="unsafe")
        np.right_shift(qs, 4, out=q[:, 1], casting="unsafe")
        out = q.reshape(len(blocks), 32)
        out *= d
        out += m
    elif ggml_type == 8:  # Q8_0: f16 scale d, 32 int8 q; d*q
        blocks = data.reshape(-1, 34)
        d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # [N, 1]
        out = blocks[:, 2:].view(np.int8).astype(np.float32)  # [N, 32]
        out *= d
    else:
        import gguf

        out = gguf.quants.dequantize(np.ascontiguousarray(data),
                                     gguf.GGMLQuantizationType(ggml_type))
    return np.asarray(out, dtype=np.float32).reshape(*rows, -1)
