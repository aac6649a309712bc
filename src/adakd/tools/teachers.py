"""``adakd teachers fetch | list | eval``: get the published teachers (engine/published_teachers.py) onto this
machine, see which are here, and measure them beside their published top-1.

``fetch`` downloads the release archive (resumable, tools/download.py), checks it and unpacks it atomically:

* **checked**: the archive's sha256 is recorded on the first download in ``<root>/<folder>.json`` (with the
  sha256 of every unpacked file) and printed; a later download with another sha256 is an error;
* **atomic**: the archive is extracted into a temporary folder beside the target (``tarfile``'s ``data``
  filter: no absolute paths, no ``..``, no links out, no devices), checked, then renamed into place; a failure
  leaves no partial folder. The archive is deleted once unpacked (its sha256 stays in the record).
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..engine.checkpoint import atomic_write_text
from ..engine.published_teachers import (RELEASE_PAGE, RELEASES, Release, existing_published_path, how_to_get,
                                         release_for, teachers_root)
from ..errors import AdakdError, ConfigError
from .download import DownloadError, download, part_path, sha256_file
from .report.published import Published, lookup


class ChecksumError(AdakdError):
    """A downloaded archive or an unpacked file whose sha256 differs from the one recorded."""


def record_path(release: Release, root: Path) -> Path:
    return root / f"{release.folder}.json"


def published_top1(model: str, dataset: str) -> Published | None:
    """The published top-1 of ``model`` as the tables' teacher on ``dataset`` (tools/report/published.py)."""
    return lookup(dataset, None, model, "teacher")


@dataclass
class Fetched:
    folder: Path
    sha256: str
    recorded: bool  #: True: this download recorded the sha256 (first one); False: it matched the record
    missing: list[str]  #: catalogue teachers the archive did not hold


def fetch(dataset: str, url: str | None = None, force: bool = False, progress: bool = True,
          log: Callable[[str], None] = print) -> Fetched:
    """Download ``dataset``'s release archive into the teachers root, check it, unpack it atomically."""
    release = release_for(dataset)
    root = teachers_root()
    url = url or release.archive_url
    target = root / release.folder
    if url is None:
        places = ", ".join(str(target / rel) for rel in release.files.values())
        raise ConfigError(f"the reference README gives no archive URL for the {dataset} teachers: download them "
                          f"from {RELEASE_PAGE} and save them as {places} (or pass --url URL of a tar archive "
                          f"holding the folder {release.folder}/).")
    record_file = record_path(release, root)
    record = json.loads(record_file.read_text()) if record_file.is_file() else None
    if target.is_dir() and not force:
        _verify_unpacked(root, record, record_file)
        log(f"{target} is already there" + (f" (its files match {record_file.name})" if record else "")
            + "; --force downloads it again")
        return Fetched(target, record["sha256"] if record else "", False, _missing(release, target))
    archive = root / (url.rstrip("/").rsplit("/", 1)[-1] or f"{release.folder}.tar")
    log(f"downloading {url}\n  to {archive}" + (" (resuming)" if part_path(archive).is_file() else ""))
    try:
        download(url, archive, progress=progress)
    except DownloadError as exc:
        if exc.resumable:
            raise
        raise DownloadError(f"{exc}. {'Offline: d' if exc.offline else 'D'}ownload {url} elsewhere (browser, "
                            f"another machine) and unpack it here (`tar xf {archive.name} -C {root}`) so that "
                            f"{target}/ holds <arch>_vanilla/ckpt_epoch_240.pth, or set $ADAKD_TEACHERS to the "
                            f"folder that holds {release.folder}/.", offline=exc.offline) from exc
    try:
        digest = sha256_file(archive)
        if record is not None and record["sha256"] != digest:
            raise ChecksumError(f"{url} has sha256 {digest}, but {record_file} recorded {record['sha256']} on the "
                                "first download: the release changed or this copy is corrupt. Fetch again; if the "
                                f"release was replaced on purpose, delete {record_file} to record the new one.")
        files = _unpack(archive, release, target)
    finally:
        archive.unlink()  # unpacked, or rejected: the next fetch downloads afresh
    first = record is None
    if first:
        record = {"url": url, "sha256": digest, "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "files": files}
        atomic_write_text(record_file, json.dumps(record, indent=2, sort_keys=True) + "\n")
    log(f"sha256 {digest} ({'recorded in' if first else 'matches'} {record_file})")
    return Fetched(target, digest, first, _missing(release, target))


def _missing(release: Release, target: Path) -> list[str]:
    return [model for model, rel in release.files.items() if not (target / rel).is_file()]


def _verify_unpacked(root: Path, record: dict | None, record_file: Path) -> None:
    """Every file the record lists is under ``root`` with its recorded sha256."""
    for rel, digest in (record or {}).get("files", {}).items():
        path = root / rel
        if not path.is_file() or sha256_file(path) != digest:
            raise ChecksumError(f"{path} is {'changed' if path.is_file() else 'missing'} since it was unpacked "
                                f"(see {record_file}): fetch the teachers again with --force.")


def _extract(archive: Path, into: Path) -> None:
    """Extract a tar safely: ``tarfile``'s ``data`` filter, or (Python < 3.10.12) regular files and folders
    with relative paths that stay inside ``into``, nothing else."""
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
            return
        members = tar.getmembers()
        for m in members:
            name = Path(m.name)
            if not (m.isfile() or m.isdir()) or name.is_absolute() or ".." in name.parts:
                raise tarfile.TarError(f"unsafe member {m.name!r}")
        tar.extractall(into, members=members)


def _unpack(archive: Path, release: Release, target: Path) -> dict[str, str]:
    """Extract ``archive`` beside ``target``, check it holds ``release.folder``, rename it into place.
    Returns {path under the root: sha256} of the unpacked files. A failure leaves ``target`` as it was."""
    staging = Path(tempfile.mkdtemp(prefix=f".{release.folder}.", dir=target.parent))
    try:
        try:
            _extract(archive, staging)
        except (tarfile.TarError, OSError) as exc:
            raise ChecksumError(f"{archive} is not a readable tar archive or holds unsafe members ({exc}): "
                                "fetch again.") from exc
        unpacked = staging / release.folder
        if not any((unpacked / rel).is_file() for rel in release.files.values()):
            raise ChecksumError(f"{archive} holds no {release.folder}/<arch>_vanilla/... teacher file: it is not "
                                "the release archive.")
        files = {p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(unpacked.rglob("*"))
                 if p.is_file()}
        old = staging.with_name(staging.name + "-previous")  # the folder it replaces, deleted once replaced
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(unpacked, target)
        except OSError:
            if old.exists():
                os.replace(old, target)
            raise
        return files
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(staging.with_name(staging.name + "-previous"), ignore_errors=True)


def evaluate_published(dataset: str, models: list[str] | None = None, data_root: str | None = None,
                       device: str = "auto") -> list[dict[str, object]]:
    """Top-1 of each published teacher present here (or of ``models``) on ``dataset``'s test split, beside its
    published figure: a user checks their copy of the release (and their copy of the data) in one command."""
    from ..data import DataConfig
    from ..engine.checkpoint import load_model_weights
    from ..engine.evaluate import evaluate
    from ..models import build_model
    from ..runtime.device import resolve_device
    from .report.analysis_plots import evaluation_loader

    release = release_for(dataset)
    if models is None:
        models = [m for m in release.files if (teachers_root() / release.folder / release.files[m]).is_file()]
        if not models:
            raise ConfigError(f"no published {dataset} teacher is under {teachers_root() / release.folder}. "
                              f"{how_to_get(dataset, teachers_root() / release.folder)}")
    dev = resolve_device(device)
    loader, info = evaluation_loader(DataConfig(name=dataset, root=data_root), dev)
    rows = []
    for name in models:
        path = existing_published_path(name, dataset)
        model = build_model(name, num_classes=info.num_classes, in_channels=info.in_channels,
                            image_size=info.image_size)
        load_model_weights(model, path, None, f"published teacher {path}")
        result = evaluate(model.to(dev), loader, dev, "fp32")
        pub = published_top1(name, dataset)
        rows.append({"dataset": dataset, "model": name, "path": str(path), "count": result["count"],
                     "top1": result["top1"], "top5": result["top5"], "loss": result["loss"],
                     "published_top1": pub.top1 if pub else None, "source": pub.source if pub else None})
    return rows


def format_evaluation(rows: list[dict[str, object]]) -> str:
    lines = [f"{'model':<12}{'top-1':>8}{'published':>11}{'diff':>7}  test images, source"]
    for r in rows:
        pub = r["published_top1"]
        diff = f"{r['top1'] - pub:+.2f}" if pub is not None else "-"
        lines.append(f"{r['model']:<12}{r['top1']:>8.2f}{pub if pub is not None else '-':>11}{diff:>7}  "
                     f"{r['count']}, {r['source'] or 'no published figure'}")
    return "\n".join(lines)


def listing() -> list[dict[str, object]]:
    """Every published teacher: dataset, model, path, present, published top-1 and its source."""
    rows = []
    for dataset, release in RELEASES.items():
        root = teachers_root() / release.folder
        for model, rel in release.files.items():
            pub = published_top1(model, dataset)
            rows.append({"dataset": dataset, "model": model, "path": str(root / rel),
                         "present": (root / rel).is_file(), "published_top1": pub.top1 if pub else None,
                         "source": pub.source if pub else None})
    return rows


def format_listing(rows: list[dict[str, object]]) -> str:
    lines = [f"published teachers under {teachers_root()} ($ADAKD_TEACHERS; `adakd teachers fetch DATASET`)",
             f"{'dataset':<14}{'model':<12}{'here':<6}{'published top-1':>16}  source"]
    for r in rows:
        top1 = f"{r['published_top1']:.2f}" if r["published_top1"] is not None else "-"
        lines.append(f"{r['dataset']:<14}{r['model']:<12}{'yes' if r['present'] else 'no':<6}{top1:>16}  "
                     f"{r['source'] or 'not published in the tables'}")
    return "\n".join(lines)
