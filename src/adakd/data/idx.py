"""Reader for the IDX format of MNIST-style files (LeCun et al., http://yann.lecun.com/exdb/mnist/).

Layout: 2 zero bytes, a type byte (0x08 = unsigned byte), a byte with the number of
dimensions ``d``, ``d`` big-endian uint32 sizes, then the data in C order. Image files have
magic 0x00000803 (``[N, rows, cols]``), label files 0x00000801 (``[N]``).
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def read_raw(path: Path, how_to_fix: str) -> bytes:
    """The file's bytes, gunzipped when the name ends in ``.gz``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}. {how_to_fix}") from exc
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is not a valid gzip file ({exc}): it is corrupt or was cut short. "
                        f"{how_to_fix}") from exc


def parse_idx(data: bytes, path: Path, magic: int, how_to_fix: str) -> np.ndarray:
    """Parse IDX bytes into a uint8 array, checking the magic number, the header and the length."""
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX file. {how_to_fix}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x} "
                        f"({'images' if magic == IMAGES_MAGIC else 'labels'} IDX file). Is it the right file? "
                        f"{how_to_fix}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: the IDX header is cut short. {how_to_fix}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header
    if payload != count:
        state = "truncated" if payload < count else "longer than its header says"
        raise DataError(f"{path}: the header announces {'x'.join(map(str, dims))} = {count} bytes of data "
                        f"but the file holds {payload}: it is {state}. {how_to_fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
