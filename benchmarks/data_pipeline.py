"""Throughput (images/s) of the DeviceLoader on Fashion-MNIST: gather + crop + flip + normalise per batch.

    python benchmarks/data_pipeline.py --root ../shared/data --device cpu --batch-size 128 --epochs 2

Prints one line per setting (augmentation on/off, channels_last on/off). Nothing is trained:
this measures the input pipeline alone, the ceiling it puts on training speed.
"""
from __future__ import annotations

import argparse
import time

import torch

from adakd.data import DeviceLoader, load_split


def measure(loader: DeviceLoader, epochs: int, device: torch.device) -> float:
    """Images per second over ``epochs`` passes (after one warm-up batch)."""
    next(iter(loader))
    loader.set_epoch(0)
    count = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            count += batch.x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="data root (default: $ADAKD_DATA or ~/.cache/adakd/data)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images, labels, info = load_split("fashion_mnist", args.root, "train")
    print(f"fashion_mnist train: {tuple(images.shape)} on {device}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    for augment in (False, True):
        for channels_last in (False, True):
            loader = DeviceLoader(images, labels, mean=info.mean, std=info.std, batch_size=args.batch_size,
                                  device=device, shuffle=True, augment=augment, crop_padding=info.crop_padding,
                                  flip=info.flip, drop_last=True, channels_last=channels_last)
            rate = measure(loader, args.epochs, device)
            print(f"augment={augment!s:5} channels_last={channels_last!s:5} {rate:12,.0f} images/s")


if __name__ == "__main__":
    main()
