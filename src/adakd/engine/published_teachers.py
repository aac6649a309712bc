"""Where the published teachers live: the released files every row of the KD literature's tables starts from.

CRD (RepDistiller) trained the CIFAR-100 teachers (240 epochs); mdistiller re-released them as
``cifar_teachers.tar`` (https://github.com/megvii-research/mdistiller/releases/tag/checkpoints). Unpacked,
each is ``<root>/cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth``, a ``{"model": state_dict, ...}`` dict in
the reference layout; mdistiller's Tiny-ImageNet ResNet-18 is ``<root>/tiny_imagenet_teachers/ResNet18_vanilla/
ti_res18`` (names from mdistiller/models/cifar/__init__.py).

``<root>`` is ``$ADAKD_TEACHERS`` (an mdistiller checkout's ``download_ckpts`` folder works as is), else the
teacher cache ``$ADAKD_CACHE/teachers`` (default ``~/.cache/adakd/teachers``) that also holds the teachers
trained from recipes. ``adakd teachers fetch cifar100`` fills it; a config selects a file with
``teacher.checkpoint: published``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..runtime.cache_home import cache_home

#: The reference README's release page (mdistiller, "checkpoints" tag).
RELEASE_PAGE = "https://github.com/megvii-research/mdistiller/releases/tag/checkpoints"


@dataclass(frozen=True)
class Release:
    """One released set of teachers: the archive and where each teacher's file is once it is unpacked."""

    dataset: str  #: adakd dataset name
    folder: str  #: the archive's top folder under the root
    files: dict[str, str] = field(default_factory=dict)  #: zoo model name -> path inside ``folder``
    #: The archive's download URL as the reference README gives it; None: the README names no archive.
    archive_url: str | None = None


def _vanilla(*models: str) -> dict[str, str]:
    return {m: f"{m}_vanilla/ckpt_epoch_240.pth" for m in models}


RELEASES: dict[str, Release] = {
    "cifar100": Release(
        "cifar100", "cifar_teachers",
        _vanilla("resnet56", "resnet110", "resnet32x4", "ResNet50", "wrn_40_2", "vgg13"),
        "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"),
    # The README gives no archive URL for the Tiny-ImageNet teacher: placed by hand, not fetched.
    "tiny_imagenet": Release("tiny_imagenet", "tiny_imagenet_teachers", {"ResNet18": "ResNet18_vanilla/ti_res18"}),
}


def teachers_root() -> Path:
    """``$ADAKD_TEACHERS``, else the teacher cache (``$ADAKD_CACHE/teachers``)."""
    env = os.environ.get("ADAKD_TEACHERS")
    return Path(env).expanduser() if env else cache_home() / "teachers"


def release_for(dataset: str) -> Release:
    if dataset not in RELEASES:
        raise ConfigError(f"no published teachers for dataset {dataset!r}: they exist for {', '.join(RELEASES)}. "
                          "Give teacher.checkpoint=PATH or teacher.recipe=CONFIG.yaml instead.")
    return RELEASES[dataset]


def published_path(model: str, dataset: str) -> Path:
    """Where the published ``model`` teacher of ``dataset`` is (present or not)."""
    release = release_for(dataset)
    if model not in release.files:
        raise ConfigError(f"teacher.checkpoint: published: no {model} teacher was released for {dataset}; the "
                          f"release has {', '.join(release.files)}. Give teacher.checkpoint=PATH or "
                          "teacher.recipe=CONFIG.yaml for this teacher.")
    return teachers_root() / release.folder / release.files[model]


def how_to_get(dataset: str, path: Path) -> str:
    """One sentence: the command that fetches the release, or where to put a file fetched by hand."""
    release = release_for(dataset)
    if release.archive_url:
        return (f"Run `adakd teachers fetch {dataset}` (or unpack {release.archive_url} under "
                f"{teachers_root()}; $ADAKD_TEACHERS sets that folder).")
    return (f"Download it from {RELEASE_PAGE} and save it as {path} ($ADAKD_TEACHERS sets the folder above "
            f"{release.folder}).")


def existing_published_path(model: str, dataset: str) -> Path:
    """The published teacher's file, or one :class:`ConfigError` naming the path expected and the fetch command."""
    path = published_path(model, dataset)
    if not path.is_file():
        raise ConfigError(f"the published {model} teacher for {dataset} is not at {path}. {how_to_get(dataset, path)}")
    return path
