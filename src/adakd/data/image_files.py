"""Decoding lists of image files (PNG, JPEG, ...) into one uint8 array, with a small in-memory cache.

Pillow is imported here lazily, so the other datasets work without it.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_CACHE_ENTRIES = 4


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def image_size_of(path: Path) -> int:
    """The side of a square image (for folders without a configured ``image_size``)."""
    image_module = _pillow()
    try:
        with image_module.open(path) as image:
            width, height = image.size
    except OSError as exc:
        raise DataError(f"cannot read the image {path} ({exc}); remove or replace it.") from exc
    if width != height:
        raise DataError(f"{path} is {width}x{height}; set data.image_size=N to resize every image to NxN.")
    return width


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is a dependency of the image readers only
        raise DataError("reading image folders needs Pillow: pip install pillow") from exc
    return Image


#: What Pillow raises on a file it cannot decode (not an image, truncated, a bad header, ...).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


def unreadable(path: Path, exc: BaseException) -> DataError:
    """The one message for an image that does not decode: the file, the reason and the fixes."""
    return DataError(f"cannot decode the image {path} ({type(exc).__name__}: {exc}); remove or replace it, or set "
                     "data.bad_images=skip to leave unreadable files out of the run (they are counted and named).")


def open_image(path: Path, mode: str):
    """The image at ``path``, fully decoded and converted to ``mode`` ("RGB" or "L")."""
    image_module = _pillow()
    try:
        with image_module.open(path) as image:
            image.load()
            return image.convert(mode)
    except DECODE_ERRORS as exc:
        raise unreadable(path, exc) from exc


def decode_one(path: Path, size: int, mode: str) -> np.ndarray:
    """uint8 ``[C, size, size]`` of the image at ``path``, converted to ``mode`` and resized bilinearly."""
    image_module = _pillow()
    image = open_image(path, mode)
    if image.size != (size, size):
        image = image.resize((size, size), image_module.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


_decode_one = decode_one


def decode_images(paths: list[Path], size: int, grayscale: bool = False) -> np.ndarray:
    """All ``paths`` as uint8 ``[N, C, size, size]`` (C = 1 if ``grayscale`` else 3), resized bilinearly.

    Decoded in threads (Pillow releases the GIL) and kept in a small process-wide cache keyed
    by the files, their modification times and the size, so rebuilding the data is free.
    """
    mode = "L" if grayscale else "RGB"
    key = (size, mode, tuple((str(p), p.stat().st_mtime_ns) for p in paths))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    channels = 1 if grayscale else 3
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = _decode_one(paths[i], size, mode)

    workers = min(8, os.cpu_count() or 1)
    if workers > 1 and len(paths) > 64:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, range(len(paths))))
    else:
        for i in range(len(paths)):
            work(i)
    _CACHE[key] = out
    while len(_CACHE) > _CACHE_ENTRIES:
        _CACHE.popitem(last=False)
    return out
