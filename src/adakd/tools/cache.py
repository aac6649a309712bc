"""``adakd cache build CONFIG`` and ``adakd cache info PATH``: the teacher-output cache
(:mod:`adakd.engine.teacher_cache`) built ahead of the runs, and inspected."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from ..config import RunConfig, load_config
from ..data import build_data
from ..engine.teacher import file_lock, load_teacher, teacher_checkpoint_path
from ..engine.teacher_cache import build_views, cache_spec, file_sha, resolve_cache_dir, views_done
from ..engine.trainer import train
from ..errors import CacheError
from ..runtime.device import resolve_device


def build_for_config(cfg: RunConfig, log: Callable[[str], None] = print, stop_after: int | None = None
                     ) -> Path:
    """``adakd cache build CONFIG``: this process' share of the views (RANK / WORLD_SIZE of torchrun)."""
    if cfg.teacher is None:
        raise CacheError("the config has no teacher: a teacher cache needs teacher.name and its weights.")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(cfg.device)
    data = build_data(cfg.data, device, seed=cfg.seed, log=log if rank == 0 else None)
    ckpt = teacher_checkpoint_path(cfg.teacher, cfg, lambda c: train(c, log=log), log)
    teacher = load_teacher(cfg.teacher, data.info, device, ckpt)
    if cfg.teacher.cache == "off":
        cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"cache": "auto"})})
    spec = cache_spec(cfg, teacher, data.train)
    path = resolve_cache_dir(cfg, spec)
    with file_lock(path.with_name(path.name + f".rank{rank}.lock")):
        build_views(path, spec, teacher, data.train, device, rank=rank, world_size=world, log=log,
                    stop_after=stop_after)
    done = len(views_done(path, spec.views))
    log(f"teacher cache {path}: {done}/{spec.views} views" + (" (complete)" if done == spec.views else ""))
    return path


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``adakd cache info PATH``: what the cache holds, how much of it is built, and whether it verifies."""
    path = Path(path).expanduser()
    manifest = path / "cache.json"
    if not manifest.is_file():
        raise CacheError(f"{path} is not a teacher cache (no cache.json).")
    m = json.loads(manifest.read_text())
    views = int(m["views"])
    done = views_done(path, views)
    bad = []
    for v in done:
        sums = json.loads((path / f"view-{v:05d}.json").read_text())["sha256"]
        bad += [n for n, s in sums.items() if not (path / n).is_file() or file_sha(path / n) != s]
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {"path": str(path), "key": m.get("key"), "teacher": m["teacher"], "data": m["data"],
            "augmentation": m["augmentation"], "storage": m["storage"], "views": views, "views_built": len(done),
            "complete": len(done) == views, "corrupt_files": bad, "bytes": size}


def format_info(info: dict[str, Any]) -> str:
    """:func:`describe`'s answer as ``adakd cache info`` prints it."""
    storage = info["storage"]
    return (f"{info['path']}\n  key {info['key']}\n  teacher {info['teacher']['name']} (weights sha256 "
            f"{info['teacher']['weights'][:12]})\n  data {info['data']['config'].get('name')} "
            f"({info['data']['rows']} rows), augmentation {info['augmentation']}\n  views {info['views_built']}/"
            f"{info['views']} built, {storage['dtype']}{', top-%d' % storage['topk'] if storage['topk'] else ''}, "
            f"{info['bytes'] / 2**20:.1f} MiB\n  checksums: "
            + ("all files verify" if not info["corrupt_files"] else "CORRUPT " + ", ".join(info["corrupt_files"])))


def cache_command(args: argparse.Namespace) -> int:
    """``adakd cache build|info`` (the parser is cli.py's); the exit code: 1 where a cache has corrupt files."""
    if args.cache_command == "build":
        path = build_for_config(load_config(args.config, list(args.overrides)),
                                log=lambda m: print(m, file=sys.stderr, flush=True))
        print(path)
        return 0
    info = describe(args.path)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 1 if info["corrupt_files"] else 0
