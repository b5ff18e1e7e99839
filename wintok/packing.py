"""Bit-packing of token ids: ids of a 4096-entry codebook take 12 bits on disk, not 16."""
from __future__ import annotations

import numpy as np


def pack_ids(ids: np.ndarray, bits: int) -> bytes:
    """Flatten ids (row-major) and pack each into `bits` bits, least significant bit first."""
    flat = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in [1, 16], got {bits}")
    if flat.size and (flat.min() < 0 or flat.max() >= (1 << bits)):
        raise ValueError(f"ids must lie in [0, {1 << bits}) to pack into {bits} bits, got "
                         f"[{flat.min()}, {flat.max()}]")
    if bits == 12:  # fast path: two ids -> three bytes
        if flat.size % 2:
            flat = np.append(flat, 0)
        a, b = flat[0::2].astype(np.uint32), flat[1::2].astype(np.uint32)
        word = a | (b << 12)
        return np.stack([word & 0xFF, (word >> 8) & 0xFF, word >> 16], axis=1).astype(np.uint8).tobytes()
    shifts = np.arange(bits, dtype=np.int64)
    bitmat = ((flat[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bitmat.reshape(-1), bitorder="little").tobytes()


def unpack_ids(data: bytes | np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_ids: the first `count` ids as uint16 (raises on a short buffer).

    `data`: bytes or any C-contiguous buffer (a uint8 array is read without a copy)."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in [1, 16], got {bits}")
    need = packed_size(count, bits)
    have = data.nbytes if isinstance(data, np.ndarray) else len(data)
    if have < need:
        raise ValueError(f"packed ids need {need} bytes for {count} ids of {bits} bits, got "
                         f"{have}")
    buf = np.frombuffer(data, dtype=np.uint8, count=need)
    if bits == 12:  # bytes (b0, b1, b2) -> ids b0 | (b1 & 15) << 8 and b1 >> 4 | b2 << 4
        t = buf.reshape(-1, 3)
        b0, b1, b2 = (t[:, i].astype(np.uint16) for i in range(3))
        out = np.empty((t.shape[0], 2), dtype=np.uint16)
        out[:, 0] = b0 | ((b1 & 0xF) << 8)
        out[:, 1] = (b1 >> 4) | (b2 << 4)
        return out.reshape(-1)[:count]
    bitvec = np.unpackbits(buf, bitorder="little")[: count * bits].reshape(count, bits)
    return (bitvec.astype(np.uint32) << np.arange(bits, dtype=np.uint32)).sum(1).astype(np.uint16)


def packed_size(count: int, bits: int) -> int:
    """Bytes that pack_ids writes for `count` ids."""
    if bits == 12:
        return 3 * ((count + 1) // 2)
    return (count * bits + 7) // 8
