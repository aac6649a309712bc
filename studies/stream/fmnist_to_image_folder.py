"""Write Fashion-MNIST (all 70k images) as an image folder of PNG files, for the stream-vs-device comparison.

    python studies/stream/fmnist_to_image_folder.py OUT [--root DATA_ROOT]

Layout: ``OUT/train/<label>_<class>/<index>.png`` and ``OUT/test/<class>/<index>.png`` (grey, 28x28), with
``<index>`` the row in the IDX file, zero-padded: within each class the files sort in IDX order, so
``data.train_subset`` (class-balanced, by position within each class) picks the same images as on the
IDX files. The IDX folder is linked in as ``OUT/fashion-mnist`` so that a teacher recipe on
``fashion_mnist`` finds its files under the same ``data.root``. Written to ``OUT.partial`` and renamed
when complete (an interrupted run leaves no half-written ``OUT``).
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from PIL import Image

from adakd.data import open_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--root", default=None, help="folder with the Fashion-MNIST IDX files (default: $ADAKD_DATA)")
    args = parser.parse_args()
    out: Path = args.out
    if out.exists():
        raise SystemExit(f"{out} exists; remove it first.")
    dataset = open_dataset("fashion_mnist", args.root)
    # "<label>_<name>": the folders sort in label order, so the image folder's class indices are Fashion-MNIST's
    names = [f"{i}_{n.replace('/', '-').replace(' ', '_')}" for i, n in enumerate(dataset.info.class_names)]
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for split in ("train", "test"):
        images, labels = dataset.load(split)
        for name in names:
            (partial / split / name).mkdir(parents=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image[0]).save(partial / split / names[label] / f"{i:05d}.png")
        print(f"{split}: {len(labels)} images")
    idx_dir = next(p for p in (dataset.root / "fashion-mnist", dataset.root) if any(p.glob("*idx*")))
    os.symlink(idx_dir.resolve(), partial / "fashion-mnist")
    partial.rename(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
