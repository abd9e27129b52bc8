"""The verified read's zero-copy path: a checked buffer served as tensor views, everything else left to
safetensors, with the same tensors and the same errors either way."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from normdyn.core.checkpoint import CheckpointFile, _buffer_views, _dtype_names
from normdyn.core.errors import StoreError


def _file(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def _inside(t: torch.Tensor, buf: bytearray) -> bool:
    base = torch.frombuffer(buf, dtype=torch.uint8)
    return base.data_ptr() <= t.data_ptr() < base.data_ptr() + len(buf)


def test_every_dtype_is_a_view_equal_to_safetensors_own_read(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dtype in enumerate(d for d in _dtype_names() if d is not torch.bool):
        raw = torch.randint(0, 256, (3 + i, 5), generator=gen, dtype=torch.uint8)
        tensors[f"t{i}"] = raw.view(dtype) if dtype.itemsize == 1 else raw.repeat(1, dtype.itemsize).view(dtype)
    data = save(tensors, metadata={"k": "v"})
    (tmp_path / "f.safetensors").write_bytes(data)
    buf = bytearray(data)
    assert _buffer_views(buf) is not None
    ck = CheckpointFile.from_bytes("f.safetensors", buf)
    reference = CheckpointFile(tmp_path / "f.safetensors")  # safe_open: every dtype safetensors knows
    assert ck.metadata == reference.metadata and ck.keys() == reference.keys()
    for name, expected in reference.load_all().items():
        got = ck.get(name)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8)), name  # bit for bit, NaNs too
        assert _inside(got, buf), name  # a view: no copy


@pytest.mark.parametrize(
    "tensors",
    [
        {"flag": torch.tensor([True, False])},  # bool: safetensors checks the byte values
        {"empty": torch.zeros(0, 3), "w": torch.ones(2)},  # an empty tensor
    ],
)
def test_what_the_views_do_not_take_safetensors_reads(tensors: dict[str, torch.Tensor]) -> None:
    data = save(tensors)
    assert _buffer_views(bytearray(data)) is None
    ck = CheckpointFile.from_bytes("f.safetensors", bytearray(data))
    assert all(torch.equal(ck.get(k), v) for k, v in tensors.items())


def test_an_unaligned_tensor_is_read_by_safetensors() -> None:
    body = bytes([7]) + torch.tensor([1.5, -2.0]).numpy().tobytes()
    header = {
        "b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "f": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]},
    }
    data = _file(header, body)
    assert _buffer_views(bytearray(data)) is None  # the float32 starts at an odd address
    ck = CheckpointFile.from_bytes("f.safetensors", bytearray(data))
    assert torch.equal(ck.get("f"), torch.tensor([1.5, -2.0])) and ck.get("b").tolist() == [7]


@pytest.mark.parametrize(
    "header, body",
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12),  # bytes after the data
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),  # size unlike the shape
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),  # negative shape
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),  # a gap
        ({"w": {"dtype": "XX", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),  # unknown dtype
        ({"__metadata__": {"k": 1}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    ],
)
def test_a_damaged_file_is_refused_as_safetensors_refuses_it(header: dict, body: bytes) -> None:
    data = _file(header, body)
    assert _buffer_views(bytearray(data)) is None
    with pytest.raises(StoreError) as from_bytes:
        CheckpointFile.from_bytes("bad.safetensors", data)
    with pytest.raises(StoreError) as from_buffer:
        CheckpointFile.from_bytes("bad.safetensors", bytearray(data))
    assert str(from_buffer.value) == str(from_bytes.value) and "bad.safetensors" in str(from_buffer.value)


def test_a_header_longer_than_the_file_is_refused() -> None:
    data = struct.pack("<Q", 1 << 40) + b"{}"
    assert _buffer_views(bytearray(data)) is None
    with pytest.raises(StoreError, match="bad.safetensors"):
        CheckpointFile.from_bytes("bad.safetensors", bytearray(data))
