"""Our GGUF reader against `gguf.GGUFReader`: the packaged SmolLM2 file and small synthetic files.

Metadata, tensor infos and raw bytes must be equal to what the `gguf` package reads, and
`dequantize` equal bit for bit to `gguf.quants.dequantize`. Broken files raise `GGUFError` naming
the file.
"""
import pathlib
import struct

import numpy as np
import pytest

from scalable_elicitation.assets import MissingAssetError, asset_path
from scalable_elicitation.models.gguf_file import GGML_TYPES, GGUFError, GGUFFile, dequantize

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType


def _plain(value):
    """Our metadata value in the shape `gguf`'s `field.contents()` gives (lists, not arrays)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def assert_same_as_gguf(ours: GGUFFile, theirs) -> None:
    fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}  # pseudo-keys
    assert list(ours.fields) == list(fields)
    for key, field in fields.items():
        # repr, not ==: also tells 1 from True and 1.0, and compares floats exactly.
        assert repr(_plain(ours.fields[key])) == repr(field.contents()), key
        if isinstance(ours.fields[key], np.ndarray):
            assert ours.fields[key].dtype == theirs.fields[key].parts[field.data[0]].dtype, key
    assert ours.version == theirs.fields["GGUF.version"].contents()
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        mine = ours.tensors[t.name]
        assert mine.shape == tuple(int(d) for d in t.shape), t.name
        assert (mine.ggml_type, mine.offset) == (int(t.tensor_type), t.data_offset), t.name
        raw = t.data.view(np.uint8)
        assert mine.data.shape == raw.shape and np.array_equal(mine.data, raw), t.name
        assert not mine.data.flags.writeable


def assert_dequantize_equal(ours: GGUFFile, theirs, types) -> None:
    """One tensor of each ggml type in `types`: float32, numpy-order shape, equal bit for bit."""
    first = {}
    for t in theirs.tensors:
        first.setdefault(int(t.tensor_type), t)
    assert set(types) <= set(first)
    for ggml_type in types:
        t = first[ggml_type]
        want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape)))
        got = dequantize(ours.tensors[t.name])
        assert got.dtype == np.float32 and got.shape == want.shape, t.name
        assert np.array_equal(np.ascontiguousarray(got).view(np.uint32),
                              np.ascontiguousarray(want, np.float32).view(np.uint32)), t.name


# ---------------------------------------------------------------------------------------------
# The packaged SmolLM2 (Q4_1 with a Q8_0 embedding and F32 norms)
@pytest.fixture(scope="module")
def smollm2_path() -> pathlib.Path:
    try:
        return asset_path("smollm2")
    except MissingAssetError as err:
        pytest.skip(str(err))


def test_smollm2_matches_gguf_reader(smollm2_path):
    ours, theirs = GGUFFile(smollm2_path), gguf.GGUFReader(str(smollm2_path))
    assert_same_as_gguf(ours, theirs)
    assert len(ours.fields["tokenizer.ggml.tokens"]) == 49152
    assert_dequantize_equal(ours, theirs, [Q.F32, Q.Q4_1, Q.Q8_0])


# ---------------------------------------------------------------------------------------------
# Synthetic files: every value type, F16 and Q4_0 tensors, a custom alignment, version 2
def _write_synthetic(path: pathlib.Path) -> pathlib.Path:
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_custom_alignment(64)
    for key, value, vtype in [("u8", 200, V.UINT8), ("i8", -5, V.INT8), ("u16", 60000, V.UINT16),
                              ("i16", -300, V.INT16), ("u32", 4_000_000_000, V.UINT32),
                              ("i32", -70000, V.INT32), ("f32", 0.1, V.FLOAT32),
                              ("bool", True, V.BOOL), ("str", "héllo wörld", V.STRING),
                              ("u64", 2**60, V.UINT64), ("i64", -2**60, V.INT64),
                              ("f64", 0.1, V.FLOAT64)]:
        w.add_key_value(f"t.{key}", value, vtype)
    for key, values, sub in [("f32s", [0.5, -1.25, 1e-7], V.FLOAT32), ("i8s", [-1, 2], V.INT8),
                             ("u64s", [1, 2**63], V.UINT64), ("bools", [True, False], V.BOOL),
                             ("strs", ["a b", "", "ĠÄ🙂"], V.STRING)]:
        w.add_key_value(f"t.{key}", values, V.ARRAY, sub_type=sub)
    x = np.random.default_rng(0).standard_normal((3, 4, 64), dtype=np.float32)  # [.., .., 64]
    w.add_tensor("f32", x)
    w.add_tensor("f16", x.astype(np.float16))
    for qt in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
        w.add_tensor(qt.name.lower(), gguf.quants.quantize(x, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> pathlib.Path:
    return _write_synthetic(tmp_path_factory.mktemp("gguf") / "synthetic.gguf")


def test_synthetic_matches_gguf_reader(synthetic):
    ours, theirs = GGUFFile(synthetic), gguf.GGUFReader(str(synthetic))
    assert ours.fields["general.alignment"] == 64
    assert ours.tensors["q4_1"].shape == (64, 4, 3)
    assert_same_as_gguf(ours, theirs)
    assert_dequantize_equal(ours, theirs, [Q.F32, Q.F16, Q.Q4_0, Q.Q4_1, Q.Q8_0])


def test_version_2_reads_like_3(synthetic, tmp_path):
    path = tmp_path / "v2.gguf"
    path.write_bytes(_patched(synthetic.read_bytes(), 4, struct.pack("<I", 2)))
    v2, v3 = GGUFFile(path), GGUFFile(synthetic)
    assert v2.version == 2
    assert repr(_plain(v2.fields)) == repr(_plain(v3.fields))


def test_type_table_matches_gguf():
    for code, (name, block, type_size) in GGML_TYPES.items():
        assert (Q(code).name, gguf.GGML_QUANT_SIZES[Q(code)]) == (name, (block, type_size))


# ---------------------------------------------------------------------------------------------
# Broken files
def _patched(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


def _raises(path: pathlib.Path, what: str) -> None:
    with pytest.raises(GGUFError) as info:
        GGUFFile(path)
    assert str(path) in str(info.value) and what in str(info.value), str(info.value)


@pytest.mark.parametrize("name, edit, what", [
    ("magic", lambda b: _patched(b, 0, b"GGML"), "not a GGUF file"),
    ("v1", lambda b: _patched(b, 4, struct.pack("<I", 1)), "unsupported GGUF version 1"),
    ("v4", lambda b: _patched(b, 4, struct.pack("<I", 4)), "unsupported GGUF version 4"),
    ("big_endian", lambda b: _patched(b, 4, struct.pack(">I", 3)), "big-endian"),
    ("empty", lambda b: b"", "truncated"),
    ("short_header", lambda b: b[:20], "truncated"),
    ("mid_metadata", lambda b: b[:100], "truncated"),
    ("mid_tensor_data", lambda b: b[:-100], "tensor 'q8_0' needs bytes"),
])
def test_broken_file_names_itself(synthetic, tmp_path, name, edit, what):
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(edit(synthetic.read_bytes()))
    _raises(path, what)


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path):
    name = b"blk.0.weird"
    header = (b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", len(name)) + name
              + struct.pack("<IQIQ", 1, 256, 16, 0))  # one 1-d tensor of ggml type 16 (IQ2_XXS)
    path = tmp_path / "iq2.gguf"
    path.write_bytes(header + bytes(-len(header) % 32 + 66))
    _raises(path, "tensor 'blk.0.weird' has ggml type 16")
