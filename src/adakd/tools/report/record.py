"""A study's compact record: every run of a folder of run directories as one JSON line, enough to rebuild its tables.

    adakd record studies/abl-depth/sweep.yaml             # the sweep's runs -> studies/abl-depth/runs.jsonl.gz
    adakd record RUNS_DIR -o studies/NAME/runs.jsonl.gz   # any folder of run directories (.jsonl: plain text)
    adakd record studies/abl-depth/sweep_cost.yaml        # merged into the record: its other runs are kept
    adakd report studies/abl-depth                        # the tables again, from the record

One line per run directory below the root (a folder holding ``summary.json``, ``config.yaml`` or
``sweep.json``), sorted by path, with

* ``name``: its path relative to the root (``abl-depth-kd-abl-r56_r20-s0``, ``recipe15/accuracy/...``);
* ``config_digest``: sha256 of the resolved config as canonical JSON (sorted keys), first 16 hex digits;
* ``config``: the resolved config (``config.yaml``); ``sweep``: the sweep's labels and seed (``sweep.json``);
* ``summary``: ``summary.json`` (null for a run that did not finish); ``metrics``: the lines of ``metrics.jsonl``;
* ``files``: results added to a run after training (:data:`ADDED_FILES`, e.g. a study script's ``val.json``).

Logs, checkpoints and plots are left out: the tables do not read them, and git keeps only this record.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...errors import ConfigError
from ...runtime.atomic import atomic_write_bytes

#: The record's file names in a study folder, as ``adakd report STUDY`` looks for them.
RECORD_NAMES = ("runs.jsonl.gz", "runs.jsonl")
#: JSON files that study scripts add to a run directory after training, kept in the record.
ADDED_FILES = ("val.json",)
#: The files that make a folder a run directory.
RUN_MARKERS = ("summary.json", "config.yaml", "sweep.json")


@dataclass
class StoredRun:
    """What one run left that its study's tables read, from its directory or from a record line."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def config_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """The per-epoch lines of ``metrics.jsonl`` (``kind: epoch``)."""
        return [m for m in self.metrics if m.get("kind") == "epoch"]

    def to_line(self) -> str:
        return json.dumps({"name": self.name, "config_digest": self.config_digest, "config": self.config,
                           "sweep": self.sweep or None, "summary": self.summary or None, "metrics": self.metrics,
                           "files": self.files})

    @classmethod
    def from_line(cls, line: str) -> "StoredRun":
        data = json.loads(line)
        return cls(name=data["name"], config=data.get("config") or {}, sweep=data.get("sweep") or {},
                   summary=data.get("summary") or {}, metrics=data.get("metrics") or [], files=data.get("files") or {})


# ------------------------------------------------------------------ run directories

def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return out


def read_run_dir(run_dir: Path, root: Path) -> StoredRun:
    return StoredRun(name=run_dir.relative_to(root).as_posix(), config=_yaml(run_dir / "config.yaml"),
                     sweep=_json(run_dir / "sweep.json"), summary=_json(run_dir / "summary.json"),
                     metrics=_jsonl(run_dir / "metrics.jsonl"),
                     files={name: _json(run_dir / name) for name in ADDED_FILES if (run_dir / name).is_file()})


def run_dirs(root: Path) -> list[Path]:
    """Every run directory below ``root``, sorted."""
    return sorted({p.parent for name in RUN_MARKERS for p in root.rglob(name)})


# ------------------------------------------------------------------ records

def record_in(folder: Path) -> Path | None:
    """The record of a study folder (``runs.jsonl.gz`` or ``runs.jsonl``), if it has one."""
    return next((folder / n for n in RECORD_NAMES if (folder / n).is_file()), None)


def is_record(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def read_record(path: Path) -> list[StoredRun]:
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.name.endswith(".gz") else raw).decode()
    try:
        return [StoredRun.from_line(line) for line in text.splitlines() if line.strip()]
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{path} is not a run record (one JSON object with a 'name' per line): {exc}. "
                          f"Write it again with `adakd record RUNS_DIR -o {path}`.") from exc


def load_runs(root: Path) -> list[StoredRun]:
    """The runs of a record file, of a study folder holding a record, or of a folder of run directories."""
    record = root if root.is_file() else record_in(root)
    if record is not None:
        return read_record(record)
    return [read_run_dir(d, root) for d in run_dirs(root)]


def write_record(root: Path, out: Path, replace: bool = False) -> tuple[Path, int, int]:
    """Write the record of every run directory below ``root`` to ``out`` (gzip for ``.gz``): (path, runs
    written, runs kept from the existing record).

    An existing record at ``out`` is merged, not lost: a run directory on disk replaces the line of the same
    name, and the lines of runs no longer on disk (run directories are git-ignored, so a new machine has
    only the runs it made) are kept; ``replace`` writes the runs on disk alone. Lines sorted by name."""
    runs = {run.name: run for run in (read_run_dir(d, root) for d in run_dirs(root))}
    if not runs:
        raise ConfigError(f"no run directory (with {', '.join(RUN_MARKERS)}) under {root}: run the sweep first, "
                          f"or point at the folder holding the run directories.")
    kept = 0
    if out.is_file() and not replace:
        for old in read_record(out):
            if old.name not in runs:
                runs[old.name] = old
                kept += 1
    data = "".join(runs[name].to_line() + "\n" for name in sorted(runs)).encode()
    if out.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)  # mtime 0: the same runs give the same bytes
    atomic_write_bytes(out, data)
    return out, len(runs), kept


def default_record_path(target: str | os.PathLike[str], root: Path) -> Path:
    """``runs.jsonl.gz`` in the study folder: beside the sweep file, or the parent of a ``runs`` folder."""
    path = Path(target)
    if path.is_file():
        return path.parent / RECORD_NAMES[0]
    return (root.parent if root.name == "runs" else root) / RECORD_NAMES[0]
