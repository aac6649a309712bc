"""The one atomic-write helper (runtime/atomic.py): whole new content or the old one, never a partial file,
never a temporary file left behind; and every JSON/figure writer of the package goes through it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from adakd.runtime.atomic import atomic_savefig, atomic_write, atomic_write_json, atomic_write_text

SRC = Path(__file__).resolve().parents[1] / "src" / "adakd"


def test_writes_the_content_and_creates_the_folder(tmp_path):
    path = atomic_write_json(tmp_path / "a" / "b.json", {"top1": 91.25})
    assert json.loads(path.read_text()) == {"top1": 91.25}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_a_failing_writer_leaves_the_old_target_and_no_temporary_file(tmp_path):
    path = tmp_path / "record.json"
    atomic_write_text(path, "old")

    def half_then_fail(f):
        f.write(b"new but cut sh")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_a_failing_first_write_leaves_no_target(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {"not json": object()})
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_names_the_target(tmp_path):
    def no_space(f):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as err:
        atomic_write(tmp_path / "full.json", no_space)
    assert err.value.filename == str(tmp_path / "full.json") and list(tmp_path.iterdir()) == []


def test_figure_is_written_whole_in_the_format_of_its_suffix(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = atomic_savefig(fig, tmp_path / "curves.png", dpi=50)
    svg = atomic_savefig(fig, tmp_path / "curves.svg")
    plt.close(fig)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and svg.read_text().lstrip().startswith("<?xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "curves.svg"]


def test_every_writer_uses_the_helper():
    """No module renames a temporary file itself or saves a figure straight to its target (the helper
    is the only ``os.replace``; the allowed exceptions below each say why the helper does not fit)."""
    own = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "runtime" / "atomic.py":
            continue
        text = path.read_text()
        for pattern in (r"os\.replace\(", r"\.replace\(path\)", r"\.rename\(", r"\.savefig\("):
            own += [f"{path.relative_to(SRC)}: {pattern}" for _ in re.finditer(pattern, text)]
    allowed = [
        "engine/checkpoint.py: os\\.replace\\(",   # last.pt -> last.prev.pt by hard link, then rename
        "tools/download.py: os\\.replace\\(",      # a resumable download: DEST.part outlives the process, renamed
        "tools/download.py: os\\.replace\\(",      #   once complete (both the resumed and the fresh path)
        "tools/export.py: os\\.replace\\(",        # the exported file is checked before it replaces the target
        "tools/teachers.py: os\\.replace\\(",      # a whole unpacked folder swapped into place (and the old
        "tools/teachers.py: os\\.replace\\(",      #   one moved aside, or back on failure): directories, not
        "tools/teachers.py: os\\.replace\\(",      #   files, which the helper writes
    ]
    assert own == allowed, own


def test_a_checkpoint_write_after_a_cut_one_keeps_the_previous_and_leaves_no_temporary(tmp_path, monkeypatch):
    """last.pt's write is cut after its previous version was kept (last.prev.pt a hard link of last.pt); the
    next write keeps the same previous and leaves no ``.last.prev.pt.<pid>.tmp`` behind (found by the
    4-process fault test: renaming a hard link onto the same file does nothing)."""
    import adakd.engine.checkpoint as checkpoint

    last = tmp_path / "last.pt"
    checkpoint.save_checkpoint(last, {"version": 1})
    checkpoint.save_checkpoint(last, {"version": 2}, keep_previous=True)

    def cut(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", cut)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.save_checkpoint(last, {"version": 3}, keep_previous=True)
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(checkpoint.previous_path(last))["version"] == 2  # a link of last.pt now
    checkpoint.save_checkpoint(last, {"version": 4}, keep_previous=True)
    assert checkpoint.load_checkpoint(last)["version"] == 4
    assert checkpoint.load_checkpoint(checkpoint.previous_path(last))["version"] == 2
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "last.prev.pt"}
