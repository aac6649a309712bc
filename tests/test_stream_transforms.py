"""The stream pipeline's per-sample transforms against their definitions (torchvision's), and the
replayability of their random parameters. The pixel-for-pixel comparison with torchvision itself is in
tests/vision/test_stream_transforms_tv.py (the vision venv)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adakd.data.augment import crop_and_flip
from image_sources import OneImage
from adakd.data.transforms import (ImageNetEval, ImageNetTrain, PadCropFlip, augmentation_params, center_crop_box,
                                   random_resized_crop_params, recipes, resized_shorter_side, sample_generator)

PIL = pytest.importorskip("PIL.Image")


def coordinate_image(width: int, height: int):
    """An RGB image whose pixel (x, y) is (x % 256, y % 256, (x + y) % 256): crops are recognisable."""
    x = np.arange(width)[None, :].repeat(height, 0)
    y = np.arange(height)[:, None].repeat(width, 1)
    return PIL.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8))


# ----------------------------------------------------------------------------- RandomResizedCrop
def test_rrc_whole_image_when_scale_and_ratio_are_one():
    for seed in range(5):
        assert random_resized_crop_params(40, 40, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(seed)) \
            == (0, 0, 40, 40)


def test_rrc_fallback_is_the_central_crop_at_the_nearest_ratio():
    """No try fits a 1000x10 strip: the definition's fallback keeps the height and cuts w = round(10 * 4/3)."""
    assert random_resized_crop_params(1000, 10, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0)) \
        == (0, (1000 - 13) // 2, 10, 13)
    assert random_resized_crop_params(10, 1000, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0)) \
        == ((1000 - 13) // 2, 0, 13, 10)


def test_rrc_draws_stay_in_the_defined_ranges():
    """Area fraction in [0.08, 1], aspect ratio in [3/4, 4/3] (up to rounding to whole pixels), box inside
    the image; the mean area fraction matches a NumPy Monte Carlo of the definition (draws that do not fit
    are redrawn, up to 10 times, then the whole image)."""
    gen = torch.Generator().manual_seed(1)
    fractions = []
    for _ in range(2000):
        top, left, h, w = random_resized_crop_params(300, 200, (0.08, 1.0), (3 / 4, 4 / 3), gen)
        assert 0 <= top and top + h <= 200 and 0 <= left and left + w <= 300
        assert 0.08 * 60000 * 0.95 <= h * w <= 60000
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
        fractions.append(h * w / 60000)
    rng = np.random.default_rng(0)
    reference = []
    for _ in range(20000):
        for _ in range(10):
            area = 60000 * rng.uniform(0.08, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < w <= 300 and 0 < h <= 200:
                reference.append(w * h / 60000)
                break
        else:
            reference.append(200 * round(200 * 4 / 3) / 60000)
    assert abs(np.mean(fractions) - np.mean(reference)) < 4 * np.std(reference) / math.sqrt(2000)


def test_rrc_apply_cuts_the_box_and_flips():
    image = coordinate_image(50, 40)
    params = {"top": 5, "left": 7, "height": 20, "width": 20, "flip": False}
    out = ImageNetTrain(size=20).apply(image, params)  # no resize: the exact window
    assert np.array_equal(out, np.asarray(image).transpose(2, 0, 1)[:, 5:25, 7:27])
    flipped = ImageNetTrain(size=20).apply(image, {**params, "flip": True})
    assert np.array_equal(flipped, out[:, :, ::-1])
    resized = ImageNetTrain(size=10).apply(image, params)
    expected = image.crop((7, 5, 27, 25)).resize((10, 10), PIL.Resampling.BILINEAR)
    assert np.array_equal(resized, np.asarray(expected).transpose(2, 0, 1))


# ----------------------------------------------------------------------------- Resize + CenterCrop
def test_resize_shorter_side_and_center_crop_follow_torchvision():
    assert resized_shorter_side(500, 375, 256) == (341, 256)  # int(256 * 500 / 375)
    assert resized_shorter_side(375, 500, 256) == (256, 341)
    assert resized_shorter_side(256, 256, 256) == (256, 256)
    assert center_crop_box(341, 256, 224) == (58, 16, 282, 240)  # round(58.5) == 58 (Python rounds to even)
    image = coordinate_image(300, 260)
    out = ImageNetEval(size=200, resize=260)(OneImage(image), 0, None)  # shorter side already 260: crop only
    left, top, _, _ = center_crop_box(300, 260, 200)
    assert out.shape == (3, 200, 200)
    assert np.array_equal(out, np.asarray(image).transpose(2, 0, 1)[:, top:top + 200, left:left + 200])


def test_imagenet_recipe_sizes():
    train, evaluate = recipes("imagenet", 224, 0, True, augment=True)
    assert train == ImageNetTrain(224) and evaluate == ImageNetEval(224, 256)
    image = coordinate_image(500, 375)
    assert evaluate(OneImage(image), 0, None).shape == (3, 224, 224)
    assert train(OneImage(image), 0, sample_generator(0, 0, 0)).shape == (3, 224, 224)


# ----------------------------------------------------------------------------- pad-crop-flip
def test_pad_crop_flip_equals_the_batched_device_augmentation():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 10, 10), dtype=np.uint8)
    recipe = PadCropFlip(padding=3, flip=True)
    params = [recipe.draw(sample_generator(5, 1, i), 10, 10) for i in range(6)]
    offsets = torch.tensor([[p["top"], p["left"]] for p in params])
    flips = torch.tensor([p["flip"] for p in params])
    expected = crop_and_flip(torch.from_numpy(images), offsets, flips, padding=3).numpy()
    ours = np.stack([recipe.apply(images[i], params[i]) for i in range(6)])
    assert np.array_equal(ours, expected)
    assert all(0 <= p["top"] <= 6 and 0 <= p["left"] <= 6 for p in params)


# ----------------------------------------------------------------------------- replayability
def test_parameters_are_a_pure_function_of_seed_epoch_index():
    recipe = ImageNetTrain(224)
    a = augmentation_params(recipe, 3, 7, 11, 500, 375)
    assert a == augmentation_params(recipe, 3, 7, 11, 500, 375)
    others = [augmentation_params(recipe, *key, 500, 375) for key in ((3, 7, 12), (3, 8, 11), (4, 7, 11))]
    assert all(o != a for o in others)
    flips = [PadCropFlip(0, True).draw(sample_generator(0, 0, i), 8, 8)["flip"] for i in range(4000)]
    assert abs(np.mean(flips) - 0.5) < 4 * math.sqrt(0.25 / 4000)
