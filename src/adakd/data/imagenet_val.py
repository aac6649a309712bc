"""Labels of ImageNet's validation images when they lie flat in ``val/`` (as distributed), from a ground-truth file.

Accepted files (looked for in the dataset root and in ``val/``, or named by ``data.options.val_labels``):

* ``LOC_val_solution.csv`` (the Kaggle ImageNet layout): ``ImageId,PredictionString`` whose first
  token is the wnid, e.g. ``ILSVRC2012_val_00008726,n02119789 255 142 454 329``;
* ``imagenet_2012_validation_synset_labels.txt``: one wnid per line, for the files in sorted order;
* any text file of ``<file name> <wnid>`` lines (name with or without extension).

The devkit's ``ILSVRC2012_validation_ground_truth.txt`` holds ILSVRC ids (1-1000, not in wnid order)
that only the devkit's ``meta.mat`` maps to wnids; it is refused with a message saying what to use.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DataError

CANDIDATES = ("LOC_val_solution.csv", "imagenet_2012_validation_synset_labels.txt", "val_labels.txt")
_FIX = ("Give one of " + ", ".join(CANDIDATES) + " (or '<file> <wnid>' lines) as data.options.val_labels=PATH, "
        "or sort the validation images into val/<wnid>/ folders.")


def find_ground_truth(root: Path, explicit: str | None) -> Path | None:
    """The ground-truth file: ``explicit`` if given (it must exist), else the first candidate found."""
    if explicit:
        path = Path(explicit).expanduser()
        path = path if path.is_absolute() or path.is_file() else root / path
        if not path.is_file():
            raise DataError(f"data.options.val_labels={explicit}: no such file (looked at {path}).")
        return path
    for folder in (root, root / "val"):
        for name in CANDIDATES:
            if (folder / name).is_file():
                return folder / name
    return None


def _by_name(path: Path) -> dict[str, str]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        start = 1 if rows and rows[0] and rows[0][0].strip().lower() == "imageid" else 0
        out = {}
        for number, row in enumerate(rows[start:], start=start + 1):
            if len(row) < 2 or not row[1].split():
                raise DataError(f"{path}:{number}: expected 'ImageId,wnid ...', got {','.join(row)!r}. {_FIX}")
            out[row[0].strip()] = row[1].split()[0]
        return out
    return {}


def val_labels(path: Path, files: list[Path], wnids: dict[str, int]) -> list[int]:
    """The class index of each of ``files`` (sorted by name) according to the ground-truth file ``path``."""
    named = _by_name(path)
    if not named:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
        if lines and all(len(fields) == 1 for fields in lines):
            if all(fields[0].isdigit() for fields in lines):
                raise DataError(f"{path} holds numeric class ids (the devkit's ILSVRC ids are not in wnid order). "
                                + _FIX)
            if len(lines) != len(files):
                raise DataError(f"{path} lists {len(lines)} labels for {len(files)} images in val/: one wnid per "
                                "image, in sorted file order, is expected. " + _FIX)
            named = {f.name: fields[0] for f, fields in zip(files, lines)}
        else:
            for number, fields in enumerate(lines, start=1):
                if len(fields) < 2:
                    raise DataError(f"{path}:{number}: expected '<file> <wnid>', got {' '.join(fields)!r}. {_FIX}")
                named[fields[0]] = fields[1]
    labels = []
    for f in files:
        wnid = named.get(f.name, named.get(f.stem))
        if wnid is None:
            raise DataError(f"{f} has no label in {path}. {_FIX}")
        if wnid not in wnids:
            raise DataError(f"{path} labels {f.name} as {wnid!r}, which is not a class folder of train/.")
        labels.append(wnids[wnid])
    return labels
