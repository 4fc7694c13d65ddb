"""An independent numpy implementation of ggml's quantized block formats
(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K),
written for the tests from the block layouts of ggml's ggml-common.h and
llama.cpp's gguf-py (gguf/quants.py, GGML_QUANT_SIZES in
gguf/constants.py); it does not use libmerge.

dequantize(raw, type) computes every value as ggml's dequantize_row_* does,
one f32 rounding per operation in the same order (numpy never fuses a
multiply-add), so a correct reader matches it bit for bit.

quantize(x, type) makes valid blocks from floats. Only Q8_0 (and Q8_1) is
ggml's exact reference quantizer (quantize_row_q8_0_ref: d = max|x|/127 in
f32 stored as f16, q = round-half-away(x * (1/d))); the others are simple
round-to-nearest encoders used to make test files (any valid encoding
tests a decoder), checked against their own dequantization within the
format's step."""
import numpy as np

QK_K = 256
# type id -> (name, values per block, bytes per block)
TYPES = {
    2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
}
BY_NAME = {v[0]: k for k, v in TYPES.items()}
F32 = np.float32


def _half(b, off):
    """(n, 1) f32 from the little-endian f16 at byte `off` of each block."""
    return np.ascontiguousarray(b[:, off:off + 2]).view("<f2").astype(F32)


def _f16_bytes(x):
    return np.asarray(x, F32).astype("<f2").reshape(-1, 1).view(np.uint8)


def _nibbles(qs):
    """(n, 2*k): low nibbles of the k bytes, then their high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _bits32(word_bytes):
    """(n, 32) bits of the little-endian u32 held in 4 bytes a row."""
    w = np.ascontiguousarray(word_bytes).view("<u4").astype(np.uint32)
    return ((w >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def _round_away(v):
    """C roundf: halves away from zero."""
    return np.sign(v) * np.floor(np.abs(v) + F32(0.5))


# ---------------------------------------------------------------- decoders

def _deq_q4_0(b):
    d = _half(b, 0)
    return (_nibbles(b[:, 2:18]).astype(np.int16) - 8).astype(F32) * d


def _deq_q4_1(b):
    d, m = _half(b, 0), _half(b, 2)
    return _nibbles(b[:, 4:20]).astype(F32) * d + m


def _q5_codes(qh_bytes, qs):
    return _nibbles(qs) | (_bits32(qh_bytes) << 4)


def _deq_q5_0(b):
    d = _half(b, 0)
    return (_q5_codes(b[:, 2:6], b[:, 6:22]).astype(np.int16) - 16).astype(F32) * d


def _deq_q5_1(b):
    d, m = _half(b, 0), _half(b, 2)
    return _q5_codes(b[:, 4:8], b[:, 8:24]).astype(F32) * d + m


def _deq_q8_0(b):
    return b[:, 2:34].view(np.int8).astype(F32) * _half(b, 0)


def _deq_q8_1(b):
    return b[:, 4:36].view(np.int8).astype(F32) * _half(b, 0)


def _two_bit_planes(qs):
    """Q2_K/Q3_K low bits: (n, 256) from qs (n, 64): each 128 values are 32
    bytes read at shifts 0, 2, 4, 6."""
    n = qs.shape[0]
    planes = qs.reshape(n, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    return (planes & 3).reshape(n, 256)


def _deq_q2_k(b):
    n = b.shape[0]
    sc = b[:, 0:16]
    d, dmin = _half(b, 80), _half(b, 82)
    dl = (d * (sc & 0x0F).astype(F32)).reshape(n, 16, 1)
    ml = (dmin * (sc >> 4).astype(F32)).reshape(n, 16, 1)
    q = _two_bit_planes(b[:, 16:80]).astype(F32).reshape(n, 16, 16)
    return (dl * q - ml).reshape(n, 256)


def _q3_scales(s):
    """16 six-bit scales from 12 bytes: scale k's low nibble is byte k % 8
    (low half for k < 8), its top two bits byte 8 + k % 4 at 2 * (k // 4)."""
    k = np.arange(16)
    lo = (s[:, k % 8] >> (4 * (k // 8)).astype(np.uint8)) & 0x0F
    hi = (s[:, 8 + k % 4] >> (2 * (k // 4)).astype(np.uint8)) & 3
    return (lo | (hi << 4)).astype(np.int16) - 32


def _deq_q3_k(b):
    n = b.shape[0]
    hm, qs, s = b[:, 0:32], b[:, 32:96], b[:, 96:108]
    d = _half(b, 108)
    low = _two_bit_planes(qs).astype(np.int16)
    # 32-value group g takes bit g of hmask[v % 32]; a clear bit is -4.
    g = np.arange(256) // 32
    high = (hm[:, np.arange(256) % 32] >> g.astype(np.uint8)) & 1
    q = (low - np.where(high == 1, 0, 4)).astype(F32).reshape(n, 16, 16)
    dl = (d * _q3_scales(s).astype(F32)).reshape(n, 16, 1)
    return (dl * q).reshape(n, 256)


def _k4_scales(s):
    """Q4_K/Q5_K: 8 six-bit scales and mins from 12 bytes."""
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty_like(sc)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, mn


def _k4_values(qs):
    """(n, 256) 4-bit codes: each 64 values are 32 bytes, low nibbles
    first."""
    n = qs.shape[0]
    q = qs.reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (q & 0x0F).reshape(n, 256)


def _deq_k4(b, q):
    n = b.shape[0]
    d, dmin = _half(b, 0), _half(b, 2)
    sc, mn = _k4_scales(b[:, 4:16])
    d1 = (d * sc.astype(F32)).reshape(n, 8, 1)
    m1 = (dmin * mn.astype(F32)).reshape(n, 8, 1)
    return (d1 * q.astype(F32).reshape(n, 8, 32) - m1).reshape(n, 256)


def _deq_q4_k(b):
    return _deq_k4(b, _k4_values(b[:, 16:144]))


def _deq_q5_k(b):
    qh = b[:, 16:48]
    v = np.arange(256)
    fifth = (qh[:, v % 32] >> (v // 32).astype(np.uint8)) & 1
    return _deq_k4(b, _k4_values(b[:, 48:176]) | (fifth << 4))


def _deq_q6_k(b):
    n = b.shape[0]
    ql, qh = b[:, 0:128], b[:, 128:192]
    sc = b[:, 192:208].view(np.int8).astype(F32)
    d = _half(b, 208)
    v = np.arange(256)
    h, r, l = v // 128, (v % 128) // 32, v % 32
    byte = ql[:, 64 * h + l + 32 * (r % 2)]
    low = np.where(r < 2, byte & 0x0F, byte >> 4)
    high = (qh[:, 32 * h + l] >> (2 * r).astype(np.uint8)) & 3
    q = ((low | (high << 4)).astype(np.int16) - 32).astype(F32)
    ds = (d * sc).reshape(n, 16, 1)
    return (ds * q.reshape(n, 16, 16)).reshape(n, 256)


def _deq_q8_k(b):
    d = np.ascontiguousarray(b[:, 0:4]).view("<f4").astype(F32)
    return d * b[:, 4:260].view(np.int8).astype(F32)


_DEQ = {2: _deq_q4_0, 3: _deq_q4_1, 6: _deq_q5_0, 7: _deq_q5_1, 8: _deq_q8_0,
        9: _deq_q8_1, 10: _deq_q2_k, 11: _deq_q3_k, 12: _deq_q4_k,
        13: _deq_q5_k, 14: _deq_q6_k, 15: _deq_q8_k}


def dequantize(raw, qtype, shape):
    """f32 array of `shape` from the raw bytes of a tensor of ggml type
    `qtype` (rows are the last dimension, whole blocks)."""
    _, block, size = TYPES[qtype]
    b = np.frombuffer(bytes(raw), np.uint8).reshape(-1, size)
    with np.errstate(all="ignore"):
        out = _DEQ[qtype](b).astype(F32)
    return out.reshape(shape)


# ---------------------------------------------------------------- encoders

def _safe_inv(d):
    with np.errstate(divide="ignore"):
        return np.where(d == 0, F32(0), F32(1) / d).astype(F32)


def _pack_nibbles(q):
    h = q.shape[1] // 2
    return (q[:, :h] | (q[:, h:] << 4)).astype(np.uint8)


def _pack_bits32(bits):
    w = (bits.astype(np.uint32) << np.arange(32, dtype=np.uint32)).sum(axis=1)
    return w.astype("<u4").reshape(-1, 1).view(np.uint8)


def _signed_absmax(x):
    i = np.abs(x).argmax(axis=1)
    return x[np.arange(x.shape[0]), i].reshape(-1, 1)


def _enc_q4_0(x):
    d = (_signed_absmax(x) / F32(-8)).astype(F32)
    d = d.astype("<f2").astype(F32)
    q = np.clip(np.round(x * _safe_inv(d)) + 8, 0, 15).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)


def _enc_q4_1(x):
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    d = ((hi - lo) / F32(15)).astype("<f2").astype(F32)
    m = lo.astype("<f2").astype(F32)
    q = np.clip(np.round((x - m) * _safe_inv(d)), 0, 15).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), _pack_nibbles(q)], axis=1)


def _enc_q5_0(x):
    d = (_signed_absmax(x) / F32(-16)).astype("<f2").astype(F32)
    q = np.clip(np.round(x * _safe_inv(d)) + 16, 0, 31).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _pack_bits32(q >> 4),
                           _pack_nibbles(q & 0x0F)], axis=1)


def _enc_q5_1(x):
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    d = ((hi - lo) / F32(31)).astype("<f2").astype(F32)
    m = lo.astype("<f2").astype(F32)
    q = np.clip(np.round((x - m) * _safe_inv(d)), 0, 31).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), _pack_bits32(q >> 4),
                           _pack_nibbles(q & 0x0F)], axis=1)


def _q8_0_codes(x):
    """ggml's quantize_row_q8_0_ref in f32."""
    x = x.astype(F32)
    d = (np.abs(x).max(axis=1, keepdims=True) / F32(127)).astype(F32)
    q = _round_away((x * _safe_inv(d)).astype(F32))
    return d, q.astype(np.int8)


def _enc_q8_0(x):
    d, q = _q8_0_codes(x)
    return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)


def _enc_q8_1(x):
    d, q = _q8_0_codes(x)
    s = d * q.astype(F32).sum(axis=1, keepdims=True)
    return np.concatenate([_f16_bytes(d), _f16_bytes(s), q.view(np.uint8)], axis=1)


def _sub_affine(x, sub, levels):
    """Per sub-block step s >= 0 and offset mn >= 0 with x ~ s*q - mn,
    q in 0..levels."""
    n = x.shape[0]
    xs = x.reshape(n, -1, sub)
    lo = np.minimum(xs.min(axis=2), 0)
    hi = xs.max(axis=2)
    return ((hi - lo) / F32(levels)).astype(F32), (-lo).astype(F32)


def _quant_scale(s, top):
    """A super-block scale d (as f16) and integer sub-scales in 0..top."""
    d = (s.max(axis=1, keepdims=True) / F32(top)).astype("<f2").astype(F32)
    return d, np.clip(np.round(s * _safe_inv(d)), 0, top).astype(np.uint8)


def _affine_codes(x, sub, levels, d, sc, dmin, mn):
    n = x.shape[0]
    step = (d * sc.astype(F32))[:, :, None]
    off = (dmin * mn.astype(F32))[:, :, None]
    q = np.round((x.reshape(n, -1, sub) + off) * _safe_inv(step))
    return np.clip(q, 0, levels).astype(np.uint8).reshape(n, -1)


def _enc_q2_k(x):
    n = x.shape[0]
    s, mn = _sub_affine(x, 16, 3)
    d, sc = _quant_scale(s, 15)
    dmin, m = _quant_scale(mn, 15)
    q = _affine_codes(x, 16, 3, d, sc, dmin, m)
    planes = q.reshape(n, 2, 4, 32) << (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    qs = np.bitwise_or.reduce(planes, axis=2).reshape(n, 64)
    return np.concatenate([sc | (m << 4), qs, _f16_bytes(d), _f16_bytes(dmin)], axis=1)


def _enc_q3_k(x):
    n = x.shape[0]
    s = (_signed_absmax(x.reshape(-1, 16)) / F32(-4)).reshape(n, 16).astype(F32)
    d = (np.abs(s).max(axis=1, keepdims=True) / F32(31)).astype("<f2").astype(F32)
    sc = np.clip(np.round(s * _safe_inv(d)), -32, 31).astype(np.int16)
    step = (d * sc.astype(F32))[:, :, None]
    q = np.clip(np.round(x.reshape(n, 16, 16) * _safe_inv(step)), -4, 3)
    q = (q + 4).astype(np.uint8).reshape(n, 256)  # 0..7
    planes = (q & 3).reshape(n, 2, 4, 32) << (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    qs = np.bitwise_or.reduce(planes, axis=2).reshape(n, 64)
    high = (q >> 2).reshape(n, 8, 32)  # group g -> bit g
    hm = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8).reshape(1, 8, 1), axis=1)
    u = (sc + 32).astype(np.uint8)  # 0..63
    packed = np.zeros((n, 12), np.uint8)
    for k in range(16):
        packed[:, k % 8] |= (u[:, k] & 0x0F) << (4 * (k // 8))
        packed[:, 8 + k % 4] |= (u[:, k] >> 4) << (2 * (k // 4))
    return np.concatenate([hm.astype(np.uint8), qs, packed, _f16_bytes(d)], axis=1)


def _pack_k4_scales(sc, mn):
    n = sc.shape[0]
    s = np.zeros((n, 12), np.uint8)
    s[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    s[:, 4:8] = (mn[:, :4] & 63) | ((mn[:, 4:] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return s


def _enc_k4(x, levels):
    n = x.shape[0]
    s, mn = _sub_affine(x, 32, levels)
    d, sc = _quant_scale(s, 63)
    dmin, m = _quant_scale(mn, 63)
    q = _affine_codes(x, 32, levels, d, sc, dmin, m)
    low = (q & 0x0F).reshape(n, 4, 2, 32)
    qs = (low[:, :, 0, :] | (low[:, :, 1, :] << 4)).reshape(n, 128)
    head = [_f16_bytes(d), _f16_bytes(dmin), _pack_k4_scales(sc, m)]
    return q, qs, head


def _enc_q4_k(x):
    _, qs, head = _enc_k4(x, 15)
    return np.concatenate(head + [qs], axis=1)


def _enc_q5_k(x):
    n = x.shape[0]
    q, qs, head = _enc_k4(x, 31)
    fifth = (q >> 4).reshape(n, 8, 32)  # sub-block j -> bit j
    qh = np.bitwise_or.reduce(fifth << np.arange(8, dtype=np.uint8).reshape(1, 8, 1), axis=1)
    return np.concatenate(head + [qh.astype(np.uint8), qs], axis=1)


def _enc_q6_k(x):
    n = x.shape[0]
    s = (_signed_absmax(x.reshape(-1, 16)) / F32(-32)).reshape(n, 16).astype(F32)
    d = (np.abs(s).max(axis=1, keepdims=True) / F32(127)).astype("<f2").astype(F32)
    sc = np.clip(np.round(s * _safe_inv(d)), -128, 127).astype(np.int8)
    step = (d * sc.astype(F32))[:, :, None]
    q = np.clip(np.round(x.reshape(n, 16, 16) * _safe_inv(step)), -32, 31)
    q = (q + 32).astype(np.uint8).reshape(n, 2, 4, 32)  # [half, r, l]
    ql = np.zeros((n, 2, 64), np.uint8)
    ql[:, :, 0:32] = (q[:, :, 0] & 0x0F) | ((q[:, :, 2] & 0x0F) << 4)
    ql[:, :, 32:64] = (q[:, :, 1] & 0x0F) | ((q[:, :, 3] & 0x0F) << 4)
    qh = np.zeros((n, 2, 32), np.uint8)
    for r in range(4):
        qh |= (q[:, :, r] >> 4) << (2 * r)
    return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64),
                           sc.view(np.uint8), _f16_bytes(d)], axis=1)


def _enc_q8_k(x):
    n = x.shape[0]
    d = (np.abs(x).max(axis=1, keepdims=True) / F32(127)).astype(F32)
    q = np.clip(np.round(x * _safe_inv(d)), -127, 127).astype(np.int8)
    bsums = q.astype(np.int16).reshape(n, 16, 16).sum(axis=2).astype("<i2")
    return np.concatenate([d.astype("<f4").view(np.uint8), q.view(np.uint8),
                           bsums.view(np.uint8)], axis=1)


_ENC = {2: _enc_q4_0, 3: _enc_q4_1, 6: _enc_q5_0, 7: _enc_q5_1, 8: _enc_q8_0,
        9: _enc_q8_1, 10: _enc_q2_k, 11: _enc_q3_k, 12: _enc_q4_k,
        13: _enc_q5_k, 14: _enc_q6_k, 15: _enc_q8_k}


def quantize(x, qtype):
    """uint8 bytes (rows of whole blocks) of float array x in type `qtype`;
    x.shape[-1] must be a multiple of the block."""
    _, block, size = TYPES[qtype]
    x = np.asarray(x, F32)
    assert x.shape[-1] % block == 0, (x.shape, TYPES[qtype][0])
    with np.errstate(all="ignore"):
        b = _ENC[qtype](x.reshape(-1, block))
    assert b.shape[1] == size and b.dtype == np.uint8, (b.shape, b.dtype)
    return b.reshape(-1)


def step(x, qtype):
    """A bound on |x - dequantize(quantize(x))| for the simple encoders:
    the widest quantization step of the format on x's range."""
    levels = {2: 15, 3: 15, 6: 31, 7: 31, 8: 254, 9: 254, 10: 3, 11: 7,
              12: 15, 13: 31, 14: 63, 15: 254}[qtype]
    span = float(np.max(x) - min(np.min(x), 0)) if qtype in (3, 7, 10, 12, 13) \
        else 2 * float(np.max(np.abs(x)))
    return span / levels
