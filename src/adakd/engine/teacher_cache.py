"""Pay for the teacher once: its outputs over K replayable augmented views, computed once, reused by any run.

Design (issue 18)
-----------------
* **Which distillers.** A distiller declares what it reads from the teacher's :class:`Features` as a class
  attribute, ``teacher_outputs = frozenset({"logits"})`` (KD, LS, DKD, DIST, AEKT) or ``{"pooled"}`` (CRD,
  RKD, PKT, CC); the default ``None`` means feature maps or the teacher model itself (FitNet, AT,
  ReviewKD, SP on the last stage, ...). A sum of distillers is cacheable when every part is. A strategy
  whose step runs the teacher's blocks itself sets ``uses_teacher_cache = False`` (SAKD's grafted pass).
  Anything not cacheable runs the live teacher, said once in the log.
* **Views.** View ``v`` of training row ``i`` is the training augmentation of augmentation epoch ``v`` drawn
  from the cache seed: :func:`adakd.data.transforms.sample_seeds` ``(cache_seed, v, i)``, the very draw a
  live run of seed ``cache_seed`` makes for row ``i`` in epoch ``v`` (on both data paths). Training epoch ``e``
  reads view ``e mod K`` of every sample; the loader builds exactly that view for the student
  (``replay_augmentation(cache_seed, K)``: the batch order stays the run's own). So with ``K = epochs`` and
  ``seed == cache_seed`` a cached run *is* the live run, up to the storage precision (fp32: identical
  losses, tested); with a small K each sample cycles through its K views.
* **Features from the cache.** ``Features(logits, stages=[], preact_stages=[], pooled)``: logits (rebuilt
  from top-k + the rest's log-mass when ``cache_topk`` is set) and the pooled embedding, float32 on the
  device. Only the training batches the loader yielded are served from the cache (the strategy's
  ``teacher_features(batch.x)`` is matched by identity); any other input (ABL's validation batches,
  evaluation) runs the live teacher, which stays loaded.
* **Storage.** ``$ADAKD_CACHE/teacher_outputs/<key>/`` beside the teacher recipe cache (``teacher.cache=auto``)
  or any PATH: ``cache.json`` (what it was built from), and per view ``logits-VVVVV.npy`` (fp16 or fp32
  ``[N, C]``; with top-k ``[N, k]`` + ``topk-VVVVV.npy`` int32 + ``rest-VVVVV.npy``), ``pooled-VVVVV.npy``,
  and ``view-VVVVV.json`` holding their sha256, written last (all writes atomic). A view without its
  json is not built: a killed build resumes at the missing views. Files are memory-mapped; every file is
  checked against its sha256 when a run opens the cache.
* **Key.** sha256 of: the teacher's weights (a hash of its state dict), the training data (dataset options,
  split, subset, row count, labels and, on the device path, the pixels), the augmentation (recipe,
  padding, flip, cache seed), K and the storage (dtype, top-k). ``auto`` finds or builds the cache of its
  key; an explicit PATH built from anything else is refused with one message naming what differs.
* **Build.** ``adakd cache build CONFIG`` (or the first ``auto`` run; ``adakd sweep`` once per pair): rank ``r``
  of ``W`` (torchrun) builds views ``v = r mod W``; the teacher runs in fp32 and NCHW (a copy), whoever builds,
  so a key always stands for the same numbers.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..errors import CacheError
from ..models.contract import Features
from ..runtime.cache_home import cache_home
from .checkpoint import atomic_write_bytes, atomic_write_text
from .teacher import file_lock, path_safe

FORMAT = "adakd-teacher-cache-v1"
#: Data config keys that do not change the training samples (where they live, how they are batched/read).
_DATA_RUNTIME = ("root", "download", "batch_size", "eval_batch_size", "num_workers", "prefetch_factor",
                 "pipeline", "memory_budget", "drop_last", "test_subset", "bad_images")


def cache_root() -> Path:
    return cache_home() / "teacher_outputs"


# ----------------------------------------------------------------------------------------- what can be cached
def teacher_outputs_of(distiller: Any) -> frozenset[str] | None:
    """What ``distiller`` reads from the teacher (a subset of {"logits", "pooled"}), or None: it needs the
    live teacher. A composite is cacheable when every part is."""
    if distiller is None:
        return None
    parts = getattr(distiller, "parts", None)
    if parts is not None:
        needs: set[str] = set()
        for part in parts.values():
            got = teacher_outputs_of(part)
            if got is None:
                return None
            needs |= got
        return frozenset(needs)
    got = getattr(type(distiller), "teacher_outputs", None)
    return None if got is None else frozenset(got)


# ----------------------------------------------------------------------------------------- the key
def _sha(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def weights_hash(model: nn.Module) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def augmentation_signature(loader: Any) -> dict[str, Any]:
    """The training augmentation of ``loader`` (the device and stream paths' pad-crop-flip are the same)."""
    if hasattr(loader, "train_recipe"):
        recipe = loader.train_recipe
        if type(recipe).__name__ == "PadCropFlip":
            return {"recipe": "pad_crop_flip", "padding": int(recipe.padding), "flip": bool(recipe.flip)}
        if type(recipe).__name__ == "SquareResize":
            return {"recipe": "pad_crop_flip", "padding": 0, "flip": False}
        return {"recipe": repr(recipe)}
    return {"recipe": "pad_crop_flip", "padding": int(loader.crop_padding), "flip": bool(loader.flip)}


def data_signature(cfg: RunConfig, loader: Any) -> dict[str, Any]:
    data = cfg.data.model_dump(mode="json")
    for key in _DATA_RUNTIME:
        data.pop(key, None)
    if hasattr(loader, "samples"):
        labels = np.asarray(loader.samples.labels, dtype=np.int64)
        pixels = None
    else:
        labels = loader.labels.cpu().numpy().astype(np.int64)
        pixels = _sha(loader.images.cpu().numpy().tobytes())
    return {"config": data, "rows": int(loader.num_rows), "labels": _sha(labels.tobytes()), "pixels": pixels}


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds and was built from; ``key`` names it."""

    material: dict[str, Any]

    @property
    def key(self) -> str:
        m = self.material
        digest = _sha(json.dumps(m, sort_keys=True).encode())[:16]
        return path_safe(f"{m['teacher']['name']}-{m['data']['config'].get('name', 'data')}-k{m['views']}-{digest}")

    @property
    def views(self) -> int:
        return int(self.material["views"])

    @property
    def seed(self) -> int:
        return int(self.material["augmentation"]["seed"])


def cache_spec(cfg: RunConfig, teacher: nn.Module, loader: Any) -> CacheSpec:
    t = cfg.teacher
    assert t is not None
    views = t.cache_views or cfg.train.epochs
    return CacheSpec({
        "format": FORMAT,
        "teacher": {"name": t.name, "kwargs": t.kwargs, "weights": weights_hash(teacher)},
        "data": data_signature(cfg, loader),
        "augmentation": {**augmentation_signature(loader), "seed": int(t.cache_seed)},
        "views": int(views),
        "storage": {"dtype": t.cache_dtype, "topk": t.cache_topk},
    })


def _differences(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    names = {"teacher": "teacher weights", "data": "training data", "augmentation": "augmentation",
             "views": "number of views K", "storage": "storage (dtype / top-k)", "format": "format"}
    return [names.get(k, k) for k in names if want.get(k) != have.get(k)]


# ----------------------------------------------------------------------------------------- files
def _view_files(view: int, topk: int | None) -> list[str]:
    names = ["logits", "pooled"] + (["topk", "rest"] if topk else [])
    return [f"{n}-{view:05d}.npy" for n in names]


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def views_done(path: Path, views: int) -> list[int]:
    return [v for v in range(views) if (path / f"view-{v:05d}.json").is_file()]


def _compress(logits: Tensor, pooled: Tensor, dtype: str, topk: int | None) -> dict[str, np.ndarray]:
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    logits = logits.float()
    out: dict[str, np.ndarray] = {"pooled": pooled.float().cpu().numpy().astype(np_dtype)}
    if topk and topk < logits.shape[1]:
        values, index = logits.topk(topk, dim=1)
        rest = logits.scatter(1, index, float("-inf")).logsumexp(dim=1)  # log of the others' total mass (x Z)
        out.update(logits=values.cpu().numpy().astype(np_dtype), topk=index.cpu().numpy().astype(np.int32),
                   rest=rest.cpu().numpy().astype(np.float32))
    else:
        out["logits"] = logits.cpu().numpy().astype(np_dtype)
    return out


def _progress(total: int, desc: str) -> Callable[[int], None]:
    """A progress line on a terminal (stderr), nothing otherwise."""
    tty = sys.stderr.isatty()
    start = time.perf_counter()

    def update(done: int) -> None:
        if tty:
            rate = done / max(time.perf_counter() - start, 1e-9)
            sys.stderr.write(f"\r{desc}: {done}/{total} ({rate:.0f}/s)" + ("\n" if done >= total else ""))
            sys.stderr.flush()
    return update


def build_views(path: Path, spec: CacheSpec, teacher: nn.Module, loader: Any, device: torch.device, *,
                rank: int = 0, world_size: int = 1, batch_size: int = 256,
                log: Callable[[str], None] = print, stop_after: int | None = None) -> list[int]:
    """Compute the missing views ``v`` with ``v % world_size == rank`` into ``path``; returns those built.
    ``stop_after``: build at most that many views (tests of a killed build)."""
    path.mkdir(parents=True, exist_ok=True)
    manifest = path / "cache.json"
    if manifest.is_file():
        check_manifest(path, spec)
    else:
        atomic_write_text(manifest, json.dumps({"key": spec.key, **spec.material}, indent=1, sort_keys=True))
    done = set(views_done(path, spec.views))
    todo = [v for v in range(spec.views) if v % world_size == rank and v not in done]
    if stop_after is not None:
        todo = todo[:stop_after]
    storage = spec.material["storage"]
    n = int(loader.num_rows)
    # one memory format for every builder (the trainer's teacher may be channels_last): same key, same numbers
    teacher = copy.deepcopy(teacher).to(memory_format=torch.contiguous_format).eval()
    built = []
    for v in todo:
        t0 = time.perf_counter()
        bar = _progress(n, f"teacher cache view {v + 1}/{spec.views}")
        logits, pooled = [], []
        with torch.no_grad():
            for start in range(0, n, batch_size):
                rows = torch.arange(start, min(start + batch_size, n))
                batch = loader.view_batch(rows, spec.seed, v)
                f = teacher.forward_features(batch.x.contiguous())
                logits.append(f.logits.float().cpu())
                pooled.append(f.pooled.float().cpu())
                bar(min(start + batch_size, n))
        arrays = _compress(torch.cat(logits), torch.cat(pooled), storage["dtype"], storage["topk"])
        sums = {}
        for name in _view_files(v, storage["topk"]):
            data = _npy_bytes(arrays[name.split("-")[0]])
            atomic_write_bytes(path / name, data)
            sums[name] = _sha(data)
        atomic_write_text(path / f"view-{v:05d}.json", json.dumps({"view": v, "sha256": sums}, sort_keys=True))
        built.append(v)
        log(f"teacher cache {spec.key}: view {v + 1}/{spec.views} built ({time.perf_counter() - t0:.1f} s)")
    return built


def check_manifest(path: Path, spec: CacheSpec) -> dict[str, Any]:
    """The manifest of the cache at ``path``; a cache built from anything else than ``spec`` is refused."""
    manifest = path / "cache.json"
    if not manifest.is_file():
        raise CacheError(f"{path} is not a teacher cache (no cache.json): build one with `adakd cache build CONFIG` "
                         "or set teacher.cache=auto.")
    try:
        have = json.loads(manifest.read_text())
    except ValueError:
        raise CacheError(f"{manifest} is corrupt: delete {path} and rebuild it with `adakd cache build CONFIG`.")
    diff = _differences(spec.material, have)
    if diff:
        raise CacheError(f"teacher cache {path} was built for other {', '.join(diff)} than this run: rebuild it "
                         f"with `adakd cache build CONFIG` for this config, or set teacher.cache=auto (a cache per key).")
    return have


class TeacherCache:
    """A complete, verified cache, memory-mapped: :meth:`features` ``(view, rows)`` -> teacher Features."""

    def __init__(self, path: Path, spec: CacheSpec, verify: bool = True) -> None:
        self.path, self.spec = Path(path), spec
        self.manifest = check_manifest(self.path, spec)
        missing = [v for v in range(spec.views) if not (self.path / f"view-{v:05d}.json").is_file()]
        if missing:
            raise CacheError(f"teacher cache {path} is incomplete ({spec.views - len(missing)}/{spec.views} views): "
                             "finish it with `adakd cache build CONFIG` (it resumes).")
        self.topk = spec.material["storage"]["topk"]
        self._arrays: dict[str, list[np.ndarray]] = {}
        for v in range(spec.views):
            sums = json.loads((self.path / f"view-{v:05d}.json").read_text())["sha256"]
            for name in _view_files(v, self.topk):
                file = self.path / name
                if not file.is_file():
                    raise CacheError(f"teacher cache {path}: {name} is missing: delete {path / f'view-{v:05d}.json'} "
                                     "and run `adakd cache build CONFIG` to rebuild that view.")
                if verify and file_sha(file) != sums[name]:
                    raise CacheError(f"teacher cache {path}: {name} fails its sha256 checksum (corrupted): delete "
                                     f"{path / f'view-{v:05d}.json'} and run `adakd cache build CONFIG` to rebuild it.")
                self._arrays.setdefault(name.split("-")[0], []).append(np.load(file, mmap_mode="r"))

    def features(self, view: int, rows: Tensor, device: torch.device, num_classes: int | None = None) -> Features:
        r = rows.cpu().numpy()
        logits = torch.from_numpy(np.asarray(self._arrays["logits"][view][r], dtype=np.float32))
        if self.topk:
            index = torch.from_numpy(np.asarray(self._arrays["topk"][view][r], dtype=np.int64))
            rest = torch.from_numpy(np.asarray(self._arrays["rest"][view][r], dtype=np.float32))
            c = int(num_classes or 0)
            fill = rest - math.log(max(c - index.shape[1], 1))  # the rest's mass spread evenly
            full = fill.view(-1, 1).expand(len(r), c).clone()
            logits = full.scatter(1, index, logits)
        pooled = torch.from_numpy(np.asarray(self._arrays["pooled"][view][r], dtype=np.float32))
        return Features(logits=logits.to(device, non_blocking=True), stages=[], preact_stages=[],
                        pooled=pooled.to(device, non_blocking=True))


# ----------------------------------------------------------------------------------------- in a run
class TeacherFeed:
    """Hands the cached teacher outputs of the batch the training loader just yielded to the strategy."""

    def __init__(self, cache: TeacherCache, device: torch.device, num_classes: int) -> None:
        self.cache, self.device, self.num_classes = cache, device, num_classes
        self._x: Tensor | None = None
        self._rows: Tensor | None = None
        self._view = 0
        self._features: Features | None = None
        self.served = 0

    def put(self, x: Tensor, rows: Tensor, view: int) -> None:
        self._x, self._rows, self._view, self._features = x, rows, view, None

    def features_for(self, x: Tensor) -> Features | None:
        """The cached Features of ``x`` if it is the training batch just yielded, else None (live teacher)."""
        if self._x is None or x is not self._x:
            return None
        if self._features is None:
            assert self._rows is not None
            self._features = self.cache.features(self._view, self._rows, self.device, self.num_classes)
            self.served += 1
        return self._features


class CachedTrainLoader:
    """The training loader, augmenting epoch ``e`` as cache view ``e mod K``, telling the feed each batch."""

    def __init__(self, loader: Any, feed: TeacherFeed) -> None:
        object.__setattr__(self, "loader", loader)
        object.__setattr__(self, "feed", feed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.loader, name, value)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        _, view = self.loader.augmentation_key(self.loader.epoch)
        for batch in self.loader:
            self.feed.put(batch.x, batch.index, view)
            yield batch


def resolve_cache_dir(cfg: RunConfig, spec: CacheSpec) -> Path:
    assert cfg.teacher is not None
    where = cfg.teacher.cache
    return cache_root() / spec.key if where == "auto" else Path(where).expanduser()


def ensure_cache(cfg: RunConfig, teacher: nn.Module, loader: Any, device: torch.device,
                 log: Callable[[str], None], build: bool = True) -> tuple[Path, CacheSpec]:
    """The cache directory of ``cfg``; with ``auto`` (or ``build``) missing views are built first (locked)."""
    spec = cache_spec(cfg, teacher, loader)
    path = resolve_cache_dir(cfg, spec)
    if path.exists() and (path / "cache.json").is_file():
        check_manifest(path, spec)
    elif cfg.teacher is not None and cfg.teacher.cache != "auto" and not build:
        raise CacheError(f"teacher.cache={path} holds no teacher cache: build it with `adakd cache build CONFIG` "
                         "or set teacher.cache=auto.")
    if len(views_done(path, spec.views)) < spec.views:
        if not build and cfg.teacher is not None and cfg.teacher.cache != "auto":
            raise CacheError(f"teacher cache {path} is incomplete: finish it with `adakd cache build CONFIG`.")
        with file_lock(path.with_name(path.name + ".lock")):
            if len(views_done(path, spec.views)) < spec.views:
                log(f"building teacher cache {path} ({spec.views} views of {loader.num_rows} samples)")
                build_views(path, spec, teacher, loader, device, log=log)
    return path, spec


def attach(cfg: RunConfig, teacher: nn.Module | None, distiller: Any, strategy: Any, data: Any,
           device: torch.device, log: Callable[[str], None], run_on_main: Callable[[Callable[[], Any]], Any]
           ) -> TeacherFeed | None:
    """``teacher.cache`` of a run: open (or build) the cache, replay its views in the training loader, and feed
    the strategy; None (live teacher, said once) where the distiller or strategy needs more than it holds."""
    if cfg.teacher is None or teacher is None or cfg.teacher.cache == "off":
        return None
    needs = teacher_outputs_of(distiller)
    if needs is None or not getattr(strategy, "uses_teacher_cache", True):
        what = (f"strategy {getattr(strategy, 'name', '?')} runs the teacher's blocks"
                if needs is not None else f"losses {list(cfg.losses)} read the teacher's feature maps")
        log(f"teacher.cache={cfg.teacher.cache}: {what}; using the live teacher")
        return None
    path, spec = run_on_main(lambda: ensure_cache(cfg, teacher, data.train, device, log))
    cache = TeacherCache(Path(path), spec)
    data.train.replay_augmentation(spec.seed, spec.views)
    feed = TeacherFeed(cache, device, data.info.num_classes)
    data.train = CachedTrainLoader(data.train, feed)
    strategy.teacher_cache = feed
    exact = spec.views == cfg.train.epochs and spec.seed == cfg.seed
    log(f"teacher outputs from cache {path} (K={spec.views} views, {spec.material['storage']['dtype']}"
        f"{', top-%d' % spec.material['storage']['topk'] if spec.material['storage']['topk'] else ''}; "
        f"{'one view per epoch: the live run' if exact else f'epoch e reads view e mod {spec.views}'})")
    return feed


__all__ = ["TeacherCache", "TeacherFeed", "CachedTrainLoader", "CacheSpec", "cache_spec", "teacher_outputs_of",
           "attach", "ensure_cache", "build_views", "resolve_cache_dir", "views_done", "file_sha", "cache_root",
           "weights_hash"]
