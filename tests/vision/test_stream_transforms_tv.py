"""The stream pipeline's transforms equal torchvision.transforms.v2 pixel for pixel on PIL images, when
torchvision's global generator and ours start from the same seed (same draws, in the same order)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from image_sources import OneImage
from adakd.data.transforms import ImageNetEval, ImageNetTrain, PadCropFlip

v2 = pytest.importorskip("torchvision.transforms.v2")
Image = pytest.importorskip("PIL.Image")


def photo(width: int, height: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def chw(image) -> np.ndarray:
    return np.asarray(image).transpose(2, 0, 1)


@pytest.mark.parametrize("size", [(64, 48), (48, 64), (300, 40)])
def test_train_recipe_equals_random_resized_crop_and_flip(size):
    image = photo(*size)
    reference = v2.Compose([v2.RandomResizedCrop(32, antialias=True), v2.RandomHorizontalFlip()])
    for seed in range(25):
        torch.manual_seed(seed)
        expected = chw(reference(image))
        assert np.array_equal(ImageNetTrain(32)(OneImage(image), 0, torch.Generator().manual_seed(seed)), expected)


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (260, 260)])
def test_eval_recipe_equals_resize_and_center_crop(size):
    image = photo(*size)
    expected = chw(v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])(image))
    assert np.array_equal(ImageNetEval(224, 256)(OneImage(image), 0, None), expected)


def test_pad_crop_flip_equals_random_crop_with_padding_and_flip():
    image = photo(12, 12)
    reference = v2.Compose([v2.RandomCrop(12, padding=3), v2.RandomHorizontalFlip()])
    for seed in range(25):
        torch.manual_seed(seed)
        expected = chw(reference(image))
        assert np.array_equal(PadCropFlip(3, True)(OneImage(image), 0, torch.Generator().manual_seed(seed)), expected)
