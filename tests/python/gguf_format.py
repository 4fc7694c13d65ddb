"""An independent GGUF (version 3) writer and reader for the tests, written
from ggml's docs/gguf.md: little-endian header (magic, version, tensor and
key/value counts), typed key/values, tensor infos with dims in ggml order
(the reverse of numpy's), data aligned to general.alignment (default 32)."""
import struct

import numpy as np

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i",
           F32: "<f", BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}
GGML = {np.dtype("float32"): 0, np.dtype("float16"): 1, np.dtype("float64"): 28}
GGML_BF16 = 30


def _str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _value(vtype, v):
    if vtype == STRING:
        return _str(v)
    if vtype == ARRAY:
        etype, items = v
        return (struct.pack("<IQ", etype, len(items)) +
                b"".join(_value(etype, x) for x in items))
    return struct.pack(_SCALAR[vtype], v)


def write(path, tensors, kvs=(), alignment=32, version=3, raw_types=None,
          offsets=None, shapes=None):
    """tensors: name -> numpy array (uint16 arrays in `raw_types` with a ggml
    type id, e.g. bf16 bits, or the uint8 bytes of quantized blocks); kvs:
    (key, type, value) triples; offsets: name -> forced relative offset (for
    broken files); shapes: name -> the shape declared for the tensor (numpy
    order) when it is not the array's, as for quantized bytes."""
    raw_types = raw_types or {}
    shapes = shapes or {}
    kvs = list(kvs)
    if alignment != 32 and not any(k == "general.alignment" for k, _, _ in kvs):
        kvs.append(("general.alignment", U32, alignment))
    out = bytearray(struct.pack("<IIQQ", 0x46554747, version, len(tensors), len(kvs)))
    for key, vtype, v in kvs:
        out += _str(key) + struct.pack("<I", vtype) + _value(vtype, v)
    rel, blobs = 0, []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        ggml = raw_types.get(name, GGML.get(a.dtype))
        off = offsets.get(name, rel) if offsets else rel
        shape = tuple(shapes.get(name, a.shape))
        out += _str(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in reversed(shape))
        out += struct.pack("<IQ", ggml, off)
        blobs.append((off, a.tobytes()))
        rel = -(-(max(rel, off) + a.nbytes) // alignment) * alignment
    out += b"\0" * (-len(out) % alignment)
    start = len(out)
    end = max((o + len(b) for o, b in blobs), default=0)
    data = bytearray(-(-end // alignment) * alignment if blobs else 0)
    for o, b in blobs:
        data[o:o + len(b)] = b
    out += data
    with open(path, "wb") as f:
        f.write(out)
    return start


class _Reader:
    def __init__(self, buf):
        self.b, self.i = buf, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.b, self.i)
        self.i += struct.calcsize(fmt)
        return v[0] if len(v) == 1 else v

    def str(self):
        n = self.take("<Q")
        s = self.b[self.i:self.i + n].decode()
        self.i += n
        return s

    def value(self, vtype):
        if vtype == STRING:
            return self.str()
        if vtype == ARRAY:
            etype, n = self.take("<IQ")
            return (etype, [self.value(etype) for _ in range(n)])
        return self.take(_SCALAR[vtype])


# Block formats: ggml type id -> (values, bytes) per block (gguf-py's
# GGML_QUANT_SIZES).
QUANT_SIZES = {2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
               8: (32, 34), 9: (32, 36), 10: (256, 84), 11: (256, 110),
               12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292)}


def read(path, raw=None):
    """(tensors, kvs): numpy arrays (bf16 as uint16 bits) and
    key -> (type, value). Quantized tensors are uint8 block bytes; when
    `raw` is a dict it receives name -> (ggml type, shape) of every
    tensor."""
    buf = open(path, "rb").read()
    r = _Reader(buf)
    magic, version, n_t, n_kv = r.take("<IIQQ")
    assert magic == 0x46554747 and version == 3, (magic, version)
    kvs = {}
    for _ in range(n_kv):
        key = r.str()
        vtype = r.take("<I")
        assert key not in kvs, key
        kvs[key] = (vtype, r.value(vtype))
    align = kvs.get("general.alignment", (U32, 32))[1]
    infos = []
    for _ in range(n_t):
        name = r.str()
        nd = r.take("<I")
        dims = [r.take("<Q") for _ in range(nd)]
        ggml, off = r.take("<IQ")
        infos.append((name, tuple(reversed(dims)), ggml, off))
    start = -(-r.i // align) * align
    tensors = {}
    for name, shape, ggml, off in infos:
        assert off % align == 0, name
        if raw is not None:
            raw[name] = (ggml, shape)
        if ggml in QUANT_SIZES:
            block, size = QUANT_SIZES[ggml]
            n = int(np.prod(shape)) // block * size
            assert start + off + n <= len(buf)
            tensors[name] = np.frombuffer(buf, np.uint8, count=n, offset=start + off).copy()
            continue
        dt = {0: np.float32, 1: np.float16, 28: np.float64, GGML_BF16: np.uint16}[ggml]
        n = int(np.prod(shape)) * np.dtype(dt).itemsize
        tensors[name] = np.frombuffer(buf, dt, count=int(np.prod(shape)),
                                      offset=start + off).reshape(shape).copy()
        assert start + off + n <= len(buf)
    return tensors, kvs
