"""Per-sample transforms of the stream pipeline, with replayable random parameters.

Every random draw of a sample comes from its seed :func:`sample_seed` ``(seed, epoch, index)``, a
counter-based hash that is vectorised (:func:`sample_seeds`): the augmentation of row ``index`` in
``epoch`` is a pure function of those three numbers and the image's size, never of a worker's RNG
state or of the order in which workers ran. So a resumed run, a different number of workers or ranks,
and a later replay (a teacher-output cache, whose view ``v`` is augmentation epoch ``v``) all see the
same pixels. The pad-crop-flip draws (:func:`pad_crop_flip_draws`) are the same function on both data
paths: the device loader computes a whole epoch's in one vectorised call, the stream loader one
sample's, and the two make identical batches. :func:`augmentation_params` gives the draws alone.

Recipes (the definitions are torchvision's; :class:`ImageNetTrain` draws from :func:`sample_generator` in
torchvision's order with the same torch calls, so with a generator in the same state it gives the same
numbers; :class:`PadCropFlip` draws from the sample's seed with :func:`pad_crop_flip_draws` in the loaders,
and from a torch generator in torchvision's way when called with one):

* :class:`PadCropFlip`: ``RandomCrop(size, padding=p)`` (zero fill) + ``RandomHorizontalFlip()``
  on an image already decoded to ``size x size`` (the CIFAR recipe; also the device path's).
* :class:`SquareResize`: the decoded ``size x size`` image as it is (evaluation of the above).
* :class:`ImageNetTrain`: ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`` (bilinear)
  + ``RandomHorizontalFlip()`` on the original image.
* :class:`ImageNetEval`: ``Resize(resize)`` (shorter side, bilinear) + ``CenterCrop(size)``.

Outputs are uint8 ``[C, H, W]`` NumPy arrays; normalisation happens batched on the device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

_SAMPLE_PURPOSE = 0xA06  # keeps these streams apart from the epoch-order streams of order.py
_GOLDEN = 0x9E3779B97F4A7C15
_U64 = 2**64 - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic): a bijective, well-mixing hash."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _add(x: np.ndarray, k: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x + np.uint64(k % 2**64)


def sample_seeds(seed: int, epoch: int, rows: Any) -> np.ndarray:
    """The 63-bit seeds (uint64 ``[n]``) of the augmentation of samples ``rows`` in ``epoch`` of run ``seed``.

    A counter-based hash (splitmix64 chained over ``(seed, purpose, epoch, row)``), vectorised over
    ``rows``: the device loader computes a whole epoch's seeds in one call, the stream loader one at a
    time, and both get the same numbers. ``epoch`` is the *augmentation* epoch: the training epoch, or the
    view index of a teacher-output cache (``adakd.engine.teacher_cache``)."""
    rows = np.asarray(rows, dtype=np.int64).astype(np.uint64) if not isinstance(rows, np.ndarray) or \
        rows.dtype != np.uint64 else rows
    key = _mix(_add(_mix(np.array([seed % 2**64], dtype=np.uint64) ^ np.uint64(_SAMPLE_PURPOSE)),
                    (epoch % 2**64) * _GOLDEN))
    return _mix(_add(_mix(key ^ rows), _GOLDEN)) >> np.uint64(1)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for the augmentation of sample ``index`` in ``epoch`` of run ``seed``
    (one element of :func:`sample_seeds`)."""
    return int(sample_seeds(seed, epoch, np.array([index % 2**63], dtype=np.int64))[0])


def seeded_uniforms(seeds: np.ndarray, count: int) -> np.ndarray:
    """``count`` uniforms in [0, 1) per seed (float64 ``[n, count]``): draw ``j`` of a sample is
    ``mix(seed + (j + 1) * golden) >> 11`` scaled by 2**-53 (a counter-based stream, no state)."""
    seeds = np.asarray(seeds, dtype=np.uint64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        counters = (np.arange(1, count + 1, dtype=np.uint64) * np.uint64(_GOLDEN)).reshape(1, -1)
        bits = _mix(seeds + counters)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def pad_crop_flip_draws(seeds: np.ndarray, padding: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """The random crop offsets (int64 ``[n, 2]`` = top, left in ``[0, 2 * padding]``) and flips (bool ``[n]``,
    p = 0.5) of ``RandomCrop(padding)`` + ``RandomHorizontalFlip`` for samples with these seeds; shared by
    the device loader (batched) and the stream loader (one sample), so both paths make the same pixels."""
    u = seeded_uniforms(seeds, 3)
    offsets = np.floor(u[:, :2] * (2 * padding + 1)).astype(np.int64) if padding else \
        np.full((len(u), 2), 0, dtype=np.int64)
    flips = (u[:, 2] < 0.5) if flip else np.zeros(len(u), dtype=bool)
    return offsets, flips


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The CPU generator that draws the random parameters of sample ``index`` in ``epoch`` for the recipes
    that draw with torch calls (:class:`ImageNetTrain`, torchvision's order of draws)."""
    return torch.Generator().manual_seed(sample_seed(seed, epoch, index))


class Source(Protocol):
    """What a recipe reads a sample from (see :mod:`adakd.data.samples`)."""

    def square(self, i: int) -> np.ndarray: ...  # uint8 [C, S, S], decoded and resized

    def image(self, i: int) -> Any: ...  # the original image (PIL), converted to the dataset's mode


def to_chw(image: Any) -> np.ndarray:
    """A PIL image (or HxW / HxWxC array) as a uint8 ``[C, H, W]`` array."""
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


# ----------------------------------------------------------------------------- parameter draws
def random_resized_crop_params(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                               gen: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of torchvision's ``RandomResizedCrop.get_params``: up to 10 tries of an area
    fraction ``U(scale)`` and a log-uniform aspect ratio in ``ratio``; failing those, the whole image
    cropped centrally to the nearest allowed aspect ratio."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect = torch.exp(torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=gen)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=gen).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=gen).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def flip_draw(gen: torch.Generator, p: float = 0.5) -> bool:
    """torchvision's ``RandomHorizontalFlip(p)`` decision: ``rand() < p``."""
    return bool(torch.rand(1, generator=gen).item() < p)


def resized_shorter_side(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_w, new_h) of torchvision's ``Resize(size)`` with an int: the shorter side becomes ``size``,
    the longer ``int(size * long / short)``."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's ``CenterCrop(size)`` for an image at least ``size`` a side:
    ``top = round((height - size) / 2)``, ``left = round((width - size) / 2)``."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def pad_crop(array: np.ndarray, top: int, left: int, padding: int) -> np.ndarray:
    """The ``[C, S, S]`` window at (top, left) of ``array`` zero-padded by ``padding`` on every side."""
    c, h, w = array.shape
    padded = np.zeros((c, h + 2 * padding, w + 2 * padding), dtype=array.dtype)
    padded[:, padding:padding + h, padding:padding + w] = array
    return padded[:, top:top + h, left:left + w]


# ----------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class PadCropFlip:
    """``RandomCrop(S, padding)`` + ``RandomHorizontalFlip()`` on the decoded ``S x S`` image."""

    padding: int
    flip: bool
    random = True

    def draw(self, gen: torch.Generator, width: int, height: int) -> dict[str, Any]:
        top = left = self.padding
        if self.padding:
            top = int(torch.randint(0, 2 * self.padding + 1, size=(1,), generator=gen).item())
            left = int(torch.randint(0, 2 * self.padding + 1, size=(1,), generator=gen).item())
        return {"top": top, "left": left, "flip": self.flip and flip_draw(gen)}

    def draw_seeded(self, seed: int) -> dict[str, Any]:
        """The draws of the sample whose seed is ``seed`` (:func:`sample_seed`): :func:`pad_crop_flip_draws`,
        what the stream and the device loaders use."""
        offsets, flips = pad_crop_flip_draws(np.array([seed], dtype=np.uint64), self.padding, self.flip)
        top, left = (int(offsets[0, 0]), int(offsets[0, 1])) if self.padding else (self.padding, self.padding)
        return {"top": top, "left": left, "flip": bool(flips[0])}

    def apply(self, array: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        out = pad_crop(array, params["top"], params["left"], self.padding) if self.padding else array
        return out[:, :, ::-1] if params["flip"] else out

    def __call__(self, source: Source, i: int, gen: torch.Generator | None) -> np.ndarray:
        array = source.square(i)
        return self.apply(array, self.draw(gen, array.shape[2], array.shape[1])) if gen is not None else array


@dataclass(frozen=True)
class SquareResize:
    """The decoded ``S x S`` image unchanged (no randomness)."""

    random = False

    def __call__(self, source: Source, i: int, gen: torch.Generator | None) -> np.ndarray:
        return source.square(i)


@dataclass(frozen=True)
class ImageNetTrain:
    """``RandomResizedCrop(size, scale, ratio)`` (bilinear) + ``RandomHorizontalFlip()`` on the original image."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    random = True

    def draw(self, gen: torch.Generator, width: int, height: int) -> dict[str, Any]:
        top, left, h, w = random_resized_crop_params(width, height, self.scale, self.ratio, gen)
        return {"top": top, "left": left, "height": h, "width": w, "flip": self.flip and flip_draw(gen)}

    def apply(self, image: Any, params: dict[str, Any]) -> np.ndarray:
        from PIL import Image

        top, left = params["top"], params["left"]
        box = (left, top, left + params["width"], top + params["height"])
        image = image.crop(box).resize((self.size, self.size), Image.Resampling.BILINEAR)
        out = to_chw(image)
        return out[:, :, ::-1] if params["flip"] else out

    def __call__(self, source: Source, i: int, gen: torch.Generator | None) -> np.ndarray:
        image = source.image(i)
        if gen is None:
            raise ValueError("ImageNetTrain draws random parameters: pass the sample's generator")
        return self.apply(image, self.draw(gen, *image.size))


@dataclass(frozen=True)
class ImageNetEval:
    """``Resize(resize)`` (shorter side, bilinear) + ``CenterCrop(size)``; 256 / 224 by default."""

    size: int = 224
    resize: int = 256
    random = False

    def __call__(self, source: Source, i: int, gen: torch.Generator | None) -> np.ndarray:
        from PIL import Image

        image = source.image(i)
        image = image.resize(resized_shorter_side(*image.size, self.resize), Image.Resampling.BILINEAR)
        return to_chw(image.crop(center_crop_box(*image.size, self.size)))


Recipe = PadCropFlip | SquareResize | ImageNetTrain | ImageNetEval


def augmentation_params(recipe: PadCropFlip | ImageNetTrain, seed: int, epoch: int, index: int,
                        width: int, height: int) -> dict[str, Any]:
    """The random parameters ``recipe`` applies to sample ``index`` (its image ``width x height``) in
    ``epoch`` of a run seeded ``seed``: exactly those the stream loader used (replayable)."""
    if isinstance(recipe, PadCropFlip):
        return recipe.draw_seeded(sample_seed(seed, epoch, index))
    return recipe.draw(sample_generator(seed, epoch, index), width, height)


def recipes(name: str, size: int, padding: int, flip: bool, augment: bool) -> tuple[Recipe, Recipe]:
    """(train, eval) transforms of the recipe ``name`` ("pad_crop_flip" or "imagenet") at ``size``."""
    if name == "imagenet":
        train: Recipe = ImageNetTrain(size, flip=flip) if augment else ImageNetEval(size, round(size / 0.875))
        return train, ImageNetEval(size, round(size / 0.875))
    if not augment or (padding == 0 and not flip):
        return SquareResize(), SquareResize()
    return PadCropFlip(padding, flip), SquareResize()
