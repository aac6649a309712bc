"""Test helper shared by the stream-transform tests (main and vision venvs): samples made of one PIL image."""
from __future__ import annotations

import numpy as np


class OneImage:
    """Samples whose every row is the same image: ``image(i)`` as PIL, ``square(i)`` as uint8 [C, H, W]."""

    def __init__(self, image):
        self.img = image

    def image(self, i):
        return self.img

    def square(self, i):
        return np.asarray(self.img).transpose(2, 0, 1)
