"""The ``data:`` section of a run config: which dataset, where it lives, how it is batched and augmented."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class DataConfig(BaseModel):
    """Dataset choice, split, subset and augmentation settings.

    ``train_subset`` is a count (int >= 1) or a fraction (float in (0, 1]) of the training
    split, taken class-balanced and deterministically from ``seed``. ``val_fraction`` holds out
    a stratified part of the *training* split as validation data; the test split is never touched.
    ``crop_padding`` / ``flip`` of ``None`` take the dataset's defaults (see ``DatasetInfo``).
    ``options`` are passed to the dataset reader (e.g. ``verify_checksum``, ``grayscale``).

    ``pipeline``: ``device`` (decoded once, held on the training device), ``stream`` (decoded each
    epoch by ``num_workers`` worker processes, None = min(8, CPU count)) or ``auto`` (device when
    the decoded splits fit ``memory_budget``; see :mod:`adakd.data.pipeline`). ``recipe``: the
    augmentation, ``pad_crop_flip`` or ``imagenet`` (None = the dataset's). ``bad_images``: a file
    that does not decode stops the run naming it (``error``) or is left out and counted (``skip``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str
    root: str | None = None
    download: bool = False
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(512, gt=0)
    val_fraction: float = Field(0.0, ge=0.0, le=0.5)
    train_subset: int | float | None = None
    #: A class-balanced part of the test split (count or fraction): for quick checks and tests only.
    test_subset: int | float | None = None
    augment: bool = True
    crop_padding: int | None = Field(None, ge=0)
    flip: bool | None = None
    image_size: int | None = Field(None, gt=0)
    seed: int = 0
    drop_last: bool = True
    options: dict[str, Any] = Field(default_factory=dict)
    pipeline: Literal["auto", "device", "stream"] = "auto"
    memory_budget: float | str | None = None
    num_workers: int | None = Field(None, ge=0)
    prefetch_factor: int = Field(2, ge=1)
    recipe: Literal["pad_crop_flip", "imagenet"] | None = None
    bad_images: Literal["error", "skip"] = "error"

    @field_validator("train_subset", "test_subset", mode="before")
    @classmethod
    def _check_subset(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool):
            raise ValueError("train_subset must be a count (e.g. 6000) or a fraction (e.g. 0.1), not a bool")
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"train_subset={value}: a count must be >= 1 (or give a fraction in (0, 1])")
            return value
        if isinstance(value, float):
            if value.is_integer() and value > 1:
                return int(value)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"train_subset={value}: a fraction must be in (0, 1] (or give a count >= 1)")
            return value
        raise ValueError("train_subset must be a count (int) or a fraction (float in (0, 1])")
