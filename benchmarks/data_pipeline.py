"""Input-pipeline throughput: the device-resident loader, and the stream pipeline's JPEG decode + augment.

    python benchmarks/data_pipeline.py device --root ../shared/data --batch-size 128 --epochs 2
    python benchmarks/data_pipeline.py stream --images 200 --workers 0 1 2 --json studies/stream/bench.json

``device``: images/s of the DeviceLoader on Fashion-MNIST (gather + crop + flip + normalise per batch),
one line per setting (augmentation on/off, channels_last on/off).

``stream``: writes synthetic JPEGs (smooth content + noise, quality 90) at ImageNet's typical size
(500x375) and at 224x224, then measures in this process, one core, the rate of one worker: decode only
(Pillow), the ImageNet train recipe (decode + RandomResizedCrop 224 + flip) and the eval recipe (decode +
Resize 256 + CenterCrop 224); then the StreamLoader end to end (batch 64, normalised) with each
``--workers``. From the train rate it derives the workers one GPU running ResNet-50 -> MobileNetV1 KD
would need, from NVIDIA's published ResNet-50 training rate (see GPU_REFERENCE). Nothing is trained.
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


GPU_REFERENCE = {
    "source": "NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md: training "
              "throughput of ResNet-50 v1.5 on 1x A100 80GB, mixed precision, 2470 img/s (TF32: 938 img/s)",
    "resnet50_train_img_s": 2470.0,
    # GFLOPs per 224x224 image (multiply-adds x2 not counted: ratios only): forward ResNet-50 4.1, MobileNetV1 0.57;
    # a training step costs ~3x its forward. KD step = teacher forward + student forward/backward.
    "resnet50_forward_gflops": 4.1,
    "mobilenetv1_forward_gflops": 0.57,
}


def kd_step_rate(reference: dict = GPU_REFERENCE) -> float:
    """Images/s of a ResNet-50 -> MobileNetV1 KD step on the reference GPU, scaled from ResNet-50 training
    by FLOPs (an upper bound: depthwise convolutions use a GPU less well than ResNet-50's)."""
    r50_train = 3 * reference["resnet50_forward_gflops"]
    kd = reference["resnet50_forward_gflops"] + 3 * reference["mobilenetv1_forward_gflops"]
    return reference["resnet50_train_img_s"] * r50_train / kd


def write_jpegs(folder, count: int, size: tuple[int, int], seed: int = 0) -> list:
    """``count`` JPEGs (quality 90) of ``size`` (w, h): upsampled low-resolution colour noise plus fine noise,
    so they compress like photographs rather than like pure noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8))
        base = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{w}x{h}_{i:05d}.JPEG"
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def per_worker_rates(paths: list, repeats: int = 2) -> dict[str, float]:
    """Images/s of one process on one core: decode only, train recipe, eval recipe (best of ``repeats``)."""
    import numpy as np

    from adakd.data.samples import FileSamples
    from adakd.data.transforms import ImageNetEval, ImageNetTrain, sample_generator

    samples = FileSamples(paths, np.zeros(len(paths), dtype=np.int64), size=224)
    jobs = {"decode": lambda i: samples.image(i),
            "train (decode + RandomResizedCrop 224 + flip)": lambda i: ImageNetTrain(224)(samples, i,
                                                                                       sample_generator(0, 0, i)),
            "eval (decode + Resize 256 + CenterCrop 224)": lambda i: ImageNetEval(224, 256)(samples, i, None)}
    rates = {}
    for name, job in jobs.items():
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(len(paths)):
                job(i)
            best = max(best, len(paths) / (time.perf_counter() - start))
        rates[name] = best
    return rates


def loader_rate(paths: list, workers: int, batch_size: int = 64) -> float:
    """Images/s of the StreamLoader (train recipe, normalised float batches) over one epoch after a warm-up batch."""
    import numpy as np

    from adakd.data import StreamLoader
    from adakd.data.samples import FileSamples
    from adakd.data.transforms import ImageNetEval, ImageNetTrain

    samples = FileSamples(paths, np.zeros(len(paths), dtype=np.int64), size=224)
    batch_size = min(batch_size, len(paths) // 2)
    loader = StreamLoader(samples, train_recipe=ImageNetTrain(224), eval_recipe=ImageNetEval(224, 256), image_size=224,
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), batch_size=batch_size, shuffle=True,
                          drop_last=True, num_workers=workers)
    next(iter(loader))  # start the workers
    loader.set_epoch(1)
    count, start = 0, time.perf_counter()
    for batch in loader:
        count += batch.x.shape[0]
    rate = count / (time.perf_counter() - start)
    loader.close()
    return rate


def machine() -> dict:
    import os
    import platform
    import subprocess

    import PIL

    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "load_average": list(os.getloadavg()), "python": platform.python_version(),
            "pillow": PIL.__version__, "torch": torch.__version__}


def stream_main(args) -> None:
    import json
    import math
    import tempfile
    from pathlib import Path

    before = machine()
    print(f"CPU {before['cpu']} ({before['cpus']} cpus), load average {before['load_average']}, Pillow {before['pillow']}")
    results: dict = {"machine": before, "sets": {}, "gpu_reference": GPU_REFERENCE}
    with tempfile.TemporaryDirectory() as tmp:
        for size in ((500, 375), (224, 224)):
            paths = write_jpegs(Path(tmp), args.images, size)
            kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
            rates = per_worker_rates(paths)
            entry = {"images": len(paths), "mean_kb": round(kb, 1), "per_worker_img_s": rates, "loader_img_s": {}}
            print(f"\n{size[0]}x{size[1]} JPEG, {kb:.0f} KB on average, {len(paths)} images; one worker (one core):")
            for name, rate in rates.items():
                print(f"  {name:48s} {rate:8.0f} images/s  ({1000 / rate:.2f} ms/image)")
            for workers in args.workers:
                rate = loader_rate(paths, workers)
                entry["loader_img_s"][str(workers)] = rate
                print(f"  StreamLoader, {workers} worker(s), batch <= 64, normalised    {rate:8.0f} images/s")
            results["sets"][f"{size[0]}x{size[1]}"] = entry
    train_rate = results["sets"]["500x375"]["per_worker_img_s"]["train (decode + RandomResizedCrop 224 + flip)"]
    gpu = kd_step_rate()
    need = math.ceil(gpu / train_rate)
    results["kd_gpu_img_s_estimate"] = gpu
    results["workers_needed"] = need
    results["machine_after"] = {"load_average": list(__import__("os").getloadavg())}
    print(f"\nResNet-50 -> MobileNetV1 KD on one A100 (estimated from {GPU_REFERENCE['resnet50_train_img_s']:.0f} img/s "
          f"ResNet-50 AMP training, scaled by FLOPs): ~{gpu:.0f} img/s -> {need} workers at {train_rate:.0f} img/s each "
          f"(500x375 JPEGs, train recipe); load average after {results['machine_after']['load_average']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def device_main(args) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    dev = sub.add_parser("device", help="the DeviceLoader on Fashion-MNIST")
    dev.add_argument("--root", default=None, help="data root (default: $ADAKD_DATA or ~/.cache/adakd/data)")
    dev.add_argument("--device", default="cpu")
    dev.add_argument("--batch-size", type=int, default=128)
    dev.add_argument("--epochs", type=int, default=2)
    dev.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    stream = sub.add_parser("stream", help="JPEG decode + augment per worker, and the StreamLoader")
    stream.add_argument("--images", type=int, default=200, help="synthetic JPEGs per size")
    stream.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    stream.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1) if args.mode == "stream" else None
    (stream_main if args.mode == "stream" else device_main)(args)


if __name__ == "__main__":
    main()
