"""A tiny safetensors reader and writer written from the format spec, for
checking libmerge's files independently of libmerge:
8-byte little-endian header length N, N bytes of JSON (name -> {dtype,
shape, data_offsets}, optional "__metadata__"), then the data."""
import json
import os
import struct

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64,
          "BF16": np.uint16}  # bf16 returned as raw bit patterns


def write(path, tensors, metadata=None, bf16=()):
    """Write {name: array}; names in `bf16` hold uint16 bf16 bit patterns."""
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dtype = "BF16" if name in bf16 else {v: k for k, v in DTYPES.items()
                                             if k != "BF16"}[arr.dtype.type]
        raw = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)


def read(path):
    """(tensors, metadata, header_length) of one file, checking the layout."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    assert 8 + n <= len(blob)
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors, spans = {}, []
    for name, e in header.items():
        a, b = e["data_offsets"]
        dt = np.dtype(DTYPES[e["dtype"]])
        arr = np.frombuffer(data[a:b], dtype=dt).reshape(e["shape"])
        assert arr.nbytes == b - a
        tensors[name] = arr
        spans.append((a, b))
    spans.sort()
    at = 0
    for a, b in spans:
        assert a == at, "hole or overlap"
        at = b
    assert at == len(data), "trailing bytes"
    return tensors, meta, n


def read_dir(path):
    """All tensors of an output directory (single file or sharded)."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            wm = json.load(f)["weight_map"]
        out = {}
        for shard in sorted(set(wm.values())):
            t, _, _ = read(os.path.join(path, shard))
            for k, v in t.items():
                assert wm[k] == shard
                out[k] = v
        assert set(out) == set(wm)
        return out
    return read(os.path.join(path, "model.safetensors"))[0]
