"""Runs survive faults: SIGKILL at random moments, SIGTERM/SIGINT, NaN/inf losses, corrupt or foreign
files, unwritable or full run directories. Real subprocesses of ``python -m adakd`` where the process
matters (kills, exit codes, messages on stderr)."""
from __future__ import annotations

import gzip
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from adakd.engine.checkpoint import load_checkpoint
from adakd.runtime.signals import StopFlag

#: Records that legitimately differ between an interrupted and an uninterrupted run (wall-clock time).
TIME_KEYS = {"train_seconds", "seconds", "images_per_second", "time_s"}


def tiny(root: Path, run_dir: Path, **train_updates) -> dict:
    train_cfg = {"epochs": 2, "precision": "fp32", "channels_last": False, "deterministic": True,
                 "optimizer": {"lr": 0.05}, "schedule": {"name": "cosine"}, "checkpoint_every_steps": 3}
    train_cfg.update(train_updates)
    return {"name": "tiny", "seed": 0, "device": "cpu", "progress": False, "run_dir": str(run_dir),
            "data": {"name": "fashion_mnist", "root": str(root), "batch_size": 16, "eval_batch_size": 250,
                     "train_subset": 256, "test_subset": 500},
            "student": {"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}}, "train": train_cfg}


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def adakd(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "adakd", *args], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


class Watched:
    """A training subprocess whose stderr lines are collected; ``started`` is set when training begins."""

    def __init__(self, config: Path) -> None:
        self.proc = adakd("train", str(config), "--resume")
        self.lines: list[str] = []
        self.started = threading.Event()
        self.epoch_done = threading.Event()
        self.done_at: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("device "):
                self.started.set()
            if line.startswith("[train 1/"):
                self.epoch_done.set()
            if line.startswith("done:"):
                self.done_at = time.monotonic()
        self.started.set()
        self.epoch_done.set()

    def wait(self) -> int:
        rc = self.proc.wait(timeout=240)
        self._reader.join(timeout=10)
        return rc

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIME_KEYS} for x in lines]


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "student.pt")["model"]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = final_state(a), final_state(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise
    la, lb = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (a, b))
    assert all(torch.equal(la["model"][k], lb["model"][k]) for k in la["model"])
    assert records(a) == records(b)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    drop = TIME_KEYS | {"run_dir"}
    assert {k: v for k, v in sa.items() if k not in drop} == {k: v for k, v in sb.items() if k not in drop}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fmnist_root) -> tuple[Path, float]:
    """An uninterrupted run (subprocess) and its training time (from the "device" line to the "done" line)."""
    base = tmp_path_factory.mktemp("reference")
    config = write_config(base / "cfg.yaml", tiny(fmnist_root, base / "run"))
    run = Watched(config)
    run.started.wait(240)
    t0 = time.monotonic()
    assert run.wait() == 0, run.stderr
    assert run.done_at is not None
    return base / "run", run.done_at - t0


def test_sigkill_at_random_moments_then_sigterm_resume_bitwise(tmp_path, fmnist_root, reference):
    """Four SIGKILLs at random moments of the training (steps, evaluation, checkpoint writes), then a
    SIGTERM inside epoch 2 (state saved, exit 130), then --resume to the end: the final weights, last.pt,
    every metric and the summary equal the uninterrupted run's, bitwise."""
    ref_dir, duration = reference
    config = write_config(tmp_path / "cfg.yaml", tiny(fmnist_root, tmp_path / "run"))
    rng = random.Random(1234)
    outcomes = []
    for _ in range(4):
        run = Watched(config)
        run.started.wait(240)
        time.sleep(rng.uniform(0.05, 0.5) * duration)  # each resumed run redoes a little, then dies
        run.proc.send_signal(signal.SIGKILL)
        rc = run.wait()
        last = tmp_path / "run" / "checkpoints" / "last.pt"
        where = load_checkpoint(last) if last.exists() else None
        outcomes.append((rc, None if where is None else (where["epoch"], where["position"])))
        if rc == 0:
            break
    assert any(rc == -signal.SIGKILL for rc, _ in outcomes), outcomes

    if outcomes[-1][0] != 0:
        run = Watched(config)
        run.epoch_done.wait(240)
        run.proc.send_signal(signal.SIGTERM)
        rc = run.wait()
        if rc != 0:  # stopped inside epoch 2 (rc 0 only if the run had already finished)
            assert rc == 130, run.stderr
            assert "stopped by signal 15" in run.stderr and "--resume" in run.stderr
            assert "Traceback" not in run.stderr
            saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
            assert saved["kind"] == "training-state"
    final = Watched(config)
    assert final.wait() == 0, final.stderr
    assert_same_run(ref_dir, tmp_path / "run")
    print("kills (exit code, (epoch, position) of last.pt):", outcomes)


def test_sigkill_during_checkpoint_write_leaves_old_or_new(tmp_path):
    """A process rewriting a 16 MB checkpoint in a loop is SIGKILLed mid-stream: the file is always one
    complete version."""
    target = tmp_path / "ckpt.pt"
    script = (
        "import sys, torch\n"
        "from adakd.engine.checkpoint import save_checkpoint\n"
        "i = 0\n"
        "while True:\n"
        "    save_checkpoint(sys.argv[1], {'kind': 'x', 'version': i, 'blob': torch.full((4_000_000,), float(i))})\n"
        "    print(i, flush=True); i += 1\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True, env=env())
    assert proc.stdout is not None
    for _ in range(3):
        proc.stdout.readline()
    time.sleep(random.Random(7).uniform(0.0, 0.2))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    state = load_checkpoint(target)
    assert torch.equal(state["blob"], torch.full((4_000_000,), float(state["version"])))


def test_stop_flag_turns_sigint_and_sigterm_into_a_flag():
    with StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # a second signal: stop at once
            os.kill(os.getpid(), signal.SIGTERM)
    with StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


# ------------------------------------------------------------------------------------ NaN / inf
def test_nonfinite_loss_stops_naming_step_and_term(tmp_path, fmnist_root, reference, capsys):
    from adakd.cli import main

    teacher = reference[0] / "checkpoints" / "student.pt"
    cfg = tiny(fmnist_root, tmp_path / "kd", epochs=1)
    cfg.update(teacher={"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}, "checkpoint": str(teacher)},
               losses={"kd": {"weight": 1e39}})  # weight * KD overflows float32 on the first step
    assert main(["train", str(write_config(tmp_path / "kd.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert "NaN/inf at step 0" in err and "non-finite terms: kd, loss" in err and "on_nonfinite=skip" in err


def test_nonfinite_keeps_last_good_checkpoint_or_skips(tmp_path, fmnist_root, capsys):
    from adakd.cli import main

    # lr 1e30: step 0 is finite, its update blows the weights up, step 1's loss is NaN/inf
    cfg = tiny(fmnist_root, tmp_path / "run", epochs=1, checkpoint_every_steps=1,
               optimizer={"lr": 1e30}, schedule={"name": "constant"})
    cfg["data"]["train_subset"] = 48  # 3 steps of 16
    assert main(["train", str(write_config(tmp_path / "a.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert "NaN/inf at step 1" in err and "non-finite terms: ce" in err
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["step"] == 1  # the state before the bad step, never one reached through it
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())

    cfg["run_dir"] = str(tmp_path / "skip")
    cfg["train"]["on_nonfinite"] = "skip"
    assert main(["train", str(write_config(tmp_path / "b.yaml", cfg))]) == 0
    line = json.loads((tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["skipped_steps"] == 2  # steps 1 and 2 of 3 skipped; the weights stay those after step 0


# ---------------------------------------------------------------------- bad files: exit 2, one message
def _corrupt_dataset(base: Path, root: Path, kind: str) -> Path:
    """A copy of Fashion-MNIST (images linked) whose train labels file is broken in one way."""
    folder = base / kind / "fashion-mnist"
    folder.mkdir(parents=True)
    src = root / "fashion-mnist"
    for f in src.iterdir():
        if f.name != "train-labels-idx1-ubyte.gz":
            os.symlink(f, folder / f.name)
    raw = bytearray(gzip.decompress((src / "train-labels-idx1-ubyte.gz").read_bytes()))
    target = folder / "train-labels-idx1-ubyte.gz"
    if kind == "bad-gzip":
        target.write_bytes(gzip.compress(bytes(raw))[:5000])  # truncated stream
    elif kind == "wrong-checksum":
        raw[100] = (raw[100] + 1) % 10  # a label changed: valid file, wrong md5
        target.write_bytes(gzip.compress(bytes(raw)))
    elif kind == "wrong-magic":
        raw[3] = 0x03  # the images magic (0x803) instead of the labels' (0x801)
        target.write_bytes(gzip.compress(bytes(raw)))
    return base / kind


def _check_one_message(name: str, rc: int, err: str, expect: str) -> None:
    assert rc == 2, (name, err[-2000:])
    assert "Traceback" not in err, (name, err)
    errors = [line for line in err.splitlines() if line.startswith("adakd: error:")]
    assert len(errors) == 1 and expect in errors[0], (name, err)


def test_bad_checkpoints_and_full_disk_via_subprocess(tmp_path, fmnist_root, reference):
    """Real ``python -m adakd`` processes (in parallel): a truncated last.pt on --resume, a teacher
    checkpoint of another architecture, a full disk. Exit code 2, one message, nothing overwritten."""
    ref_dir = reference[0]
    run = tmp_path / "truncated"
    shutil.copytree(ref_dir, run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:3000])
    (run / "checkpoints" / "last.prev.pt").unlink()  # no previous good checkpoint to fall back to
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name not in ("train.log", ".lock")}
    kd = tiny(fmnist_root, tmp_path / "teacher-run")
    kd.update(teacher={"name": "resnet8", "checkpoint": str(ref_dir / "checkpoints" / "student.pt")},
              losses={"kd": {}})  # the widths-8/16/16 student as the teacher of a default resnet8
    # a full disk: files may not grow past 60 kB (RLIMIT_FSIZE; Python ignores SIGXFSZ, writes get EFBIG)
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # noqa: E731
    cases = {
        "truncated": (["--resume"], tiny(fmnist_root, run), "not a readable PyTorch checkpoint", {}),
        "teacher": ([], kd, "does not fit", {}),
        "full": ([], tiny(fmnist_root, tmp_path / "full-run"), "could not write checkpoint", {"preexec_fn": limit}),
    }
    procs = {name: adakd("train", str(write_config(tmp_path / f"{name}.yaml", cfg)), *extra, **popen)
             for name, (extra, cfg, _, popen) in cases.items()}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=240)
        _check_one_message(name, proc.returncode, err, cases[name][2])
    for path, data in before.items():  # the failed resume overwrote nothing (config.yaml included)
        assert path.read_bytes() == data, path
    assert "error: " in (run / "train.log").read_text().splitlines()[-1]  # the log says why it stopped
    assert not (tmp_path / "full-run" / "checkpoints" / "last.pt").exists()
    assert not list((tmp_path / "full-run" / "checkpoints").glob(".*.tmp"))  # no half-written leftovers


@pytest.mark.parametrize("kind,expect", [("foreign", "not a training state"), ("bad-gzip", "train-labels"),
                                         ("wrong-checksum", "md5"), ("wrong-magic", "magic"),
                                         ("unwritable", "cannot write")])
def test_bad_inputs_exit_2_with_one_message(tmp_path, fmnist_root, reference, capsys, kind, expect):
    """The same through ``cli.main`` in-process (fast): a foreign last.pt, a corrupt dataset file (bad gzip,
    wrong md5, wrong magic), a run directory that cannot be created."""
    from adakd.cli import main

    extra: list[str] = []
    cfg = tiny(fmnist_root, tmp_path / "run")
    if kind == "foreign":
        shutil.copytree(reference[0], tmp_path / "run")
        torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "run" / "checkpoints" / "last.pt")
        extra = ["--resume"]
    elif kind == "unwritable":
        (tmp_path / "a-file").write_text("x")  # its child cannot be created, even by root
        cfg = tiny(fmnist_root, tmp_path / "a-file" / "run")
    else:
        cfg = tiny(_corrupt_dataset(tmp_path / "data", fmnist_root, kind), tmp_path / "run")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*.pt")} if kind == "foreign" else {}
    rc = main(["train", str(write_config(tmp_path / "cfg.yaml", cfg)), *extra])
    _check_one_message(kind, rc, capsys.readouterr().err, expect)
    assert all(p.read_bytes() == data for p, data in before.items())
