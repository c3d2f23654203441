"""Property-based fuzzing of the two readers that take untrusted bytes: safetensors models and
.npz clean sets. Any input either loads or raises SmoothInvError (one line); never another
exception, never a hang. Bounded in examples and time."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_safetensors

from smoothinv.data import load_clean_set
from smoothinv.errors import SmoothInvError
from smoothinv.models import create_model, load_model

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_safetensors() -> bytes:
    torch.manual_seed(0)
    model = create_model("small_cnn", 10)
    meta = {"arch": "small_cnn", "num_classes": "10", "input_size": "28,28", "channels": "1"}
    return save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, metadata=meta)


VALID_SAFETENSORS = _valid_safetensors()


def _split(blob: bytes) -> tuple[dict, bytes]:
    length = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def _join(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def _mutated(valid: bytes, data: st.DataObject) -> bytearray:
    """`valid` with 1 to 8 bytes overwritten at drawn places."""
    blob = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 8))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    return blob


def _load_or_refuse(path: Path) -> None:
    try:
        load_model(path)
    except SmoothInvError as exc:
        assert "\n" not in str(exc).strip()


@FUZZ
@given(data=st.data())
def test_safetensors_byte_mutations(tmp_path, data):
    blob = _mutated(VALID_SAFETENSORS, data)
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    path = tmp_path / "m.safetensors"
    path.write_bytes(bytes(blob))
    _load_or_refuse(path)


@FUZZ
@given(data=st.data())
def test_safetensors_crafted_headers(tmp_path, data):
    """Header fields an attacker controls: dtype, shape, offsets and metadata values."""
    header, body = _split(VALID_SAFETENSORS)
    names = sorted(k for k in header if k != "__metadata__")
    name = data.draw(st.sampled_from(names))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "metadata"]))
    if field == "dtype":
        header[name]["dtype"] = data.draw(st.sampled_from(["F16", "BF16", "F64", "I64", "U8", "BOOL", "X", ""]))
    elif field == "shape":
        header[name]["shape"] = data.draw(st.lists(st.integers(-2, 2**40), max_size=5))
    elif field == "data_offsets":
        header[name]["data_offsets"] = data.draw(st.lists(st.integers(-1, 2**40), min_size=0, max_size=3))
    else:
        key = data.draw(st.sampled_from(["arch", "num_classes", "input_size", "channels", "mean", "std"]))
        header["__metadata__"][key] = data.draw(st.one_of(
            st.sampled_from(["2500,2500", "100000", "1e9", "1000000000", "0", "-3", "nan", "inf,inf", "", "x"]),
            st.text(max_size=20)))
    path = tmp_path / "m.safetensors"
    path.write_bytes(_join(header, body))
    _load_or_refuse(path)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


image_arrays = st.one_of(
    st.builds(lambda n, h, c, dtype, fill: np.full((n, h, h, c), fill).astype(dtype),
              st.integers(0, 4), st.integers(1, 40), st.sampled_from([1, 2, 3, 4, 5]),
              st.sampled_from(["uint8", "uint16", "float32", "float64", "int8", "bool", "int64"]),
              st.sampled_from([0, 1, 255, 300, -1, np.nan, np.inf, 0.5])),
    st.builds(lambda shape: np.zeros(shape, dtype=np.uint8),
              st.lists(st.integers(0, 6), min_size=0, max_size=5).map(tuple)),
)
label_arrays = st.one_of(
    st.builds(lambda n, v, dtype: np.full(n, v).astype(dtype), st.integers(0, 5), st.sampled_from([0, 1, 9, -1, 10**12]),
              st.sampled_from(["int64", "int8", "float32", "uint8"])),
    st.just(np.array(["a", "b"])),
    st.just(np.zeros((2, 2), dtype=np.int64)),
)


@FUZZ
@given(x=image_arrays, y=label_arrays, extra=st.booleans())
def test_npz_crafted_arrays(tmp_path, x, y, extra):
    arrays = {"x": x, "y": y}
    if extra:
        arrays["class_names"] = np.array(["zero", "one"])
    path = tmp_path / "clean.npz"
    path.write_bytes(_npz_bytes(arrays))
    try:
        clean = load_clean_set(path, size=(8, 8), channels=1)
    except SmoothInvError as exc:
        assert "\n" not in str(exc).strip()
        return
    assert clean.images.shape[1:] == (1, 8, 8)
    assert bool(torch.isfinite(clean.images).all())
    if clean.images.numel():
        assert float(clean.images.min()) >= 0.0 and float(clean.images.max()) <= 1.0


VALID_NPZ = _npz_bytes({"x": np.zeros((6, 8, 8, 1), dtype=np.uint8), "y": np.arange(6) % 3})


@FUZZ
@given(data=st.data())
def test_npz_byte_mutations(tmp_path, data):
    blob = _mutated(VALID_NPZ, data)
    path = tmp_path / "clean.npz"
    path.write_bytes(bytes(blob))
    try:
        load_clean_set(path, size=(8, 8), channels=1)
    except SmoothInvError as exc:
        assert "\n" not in str(exc).strip()


def test_npz_with_a_pickled_object_array_is_refused(tmp_path):
    path = tmp_path / "clean.npz"
    with zipfile.ZipFile(path, "w") as archive:
        buffer = io.BytesIO()
        np.save(buffer, np.array([object()], dtype=object), allow_pickle=True)
        archive.writestr("x.npy", buffer.getvalue())
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(1, dtype=np.int64))
        archive.writestr("y.npy", buffer.getvalue())
    with pytest.raises(SmoothInvError):
        load_clean_set(path, size=(8, 8), channels=1)
