"""Published teachers: where their files are (``teacher.checkpoint: published``, the recipe as fallback), and
``adakd teachers fetch`` against a local HTTP server that serves a small archive in the release's layout
(full download, a resumed one after a broken transfer, sha256 recorded and a mismatch caught, atomic and
safe unpacking, the offline message), plus ``adakd teachers list``. No network: 127.0.0.1 only."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

from adakd.cli import main
from adakd.config import TeacherConfig, load_config
from adakd.engine.published_teachers import existing_published_path, published_path, teachers_root
from adakd.engine.teacher import cache_root, teacher_checkpoint_path
from adakd.errors import AdakdError, ConfigError
from adakd.tools import teachers
from adakd.tools.download import DownloadError
from test_ddp import free_port

REPO = Path(__file__).resolve().parents[1]
TEACHERS = {"resnet56": b"resnet56 weights " * 300, "resnet32x4": b"resnet32x4 weights " * 500}


def release_tar(files: dict[str, bytes] = TEACHERS, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A tar in the release's layout: cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for arch, data in files.items():
            info = tarfile.TarInfo(f"cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buffer.getvalue()


class ReleaseServer:
    """Serves ``payload`` at /cifar_teachers.tar with Range support; ``cut_at`` breaks the next full answer
    off after that many bytes (the announced length stays the whole file)."""

    def __init__(self, payload: bytes) -> None:
        self.payload, self.cut_at, self.ranges, self.ignore_ranges = payload, None, [], False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path != "/cifar_teachers.tar":
                    self.send_error(404)
                    return
                data, start = server.payload, 0
                wanted = self.headers.get("Range")
                server.ranges.append(wanted)
                if wanted and not server.ignore_ranges:
                    start = int(wanted.removeprefix("bytes=").rstrip("-"))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_at is not None:
                    body, server.cut_at = body[:server.cut_at], None
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar_teachers.tar"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "teachers"
    monkeypatch.setenv("ADAKD_TEACHERS", str(folder))
    return folder


@pytest.fixture
def server():
    srv = ReleaseServer(release_tar())
    yield srv
    srv.close()


def quiet_fetch(url: str, **kw) -> teachers.Fetched:
    return teachers.fetch("cifar100", url=url, progress=False, log=lambda m: None, **kw)


def leftovers(root: Path) -> list[str]:
    """Anything in the root beside the unpacked folder and its record (archives, .part files, staging dirs)."""
    return sorted(p.name for p in root.iterdir() if p.name not in ("cifar_teachers", "cifar_teachers.json"))


# ------------------------------------------------------------------ fetch
def test_full_download_unpacks_the_layout_and_records_the_sha256(root, server):
    fetched = quiet_fetch(server.url)
    for arch, data in TEACHERS.items():
        assert published_path(arch, "cifar100").read_bytes() == data
    record = json.loads((root / "cifar_teachers.json").read_text())
    assert record["sha256"] == fetched.sha256 == hashlib.sha256(server.payload).hexdigest()
    assert record["url"] == server.url and fetched.recorded
    assert record["files"]["cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth"] == \
        hashlib.sha256(TEACHERS["resnet56"]).hexdigest()
    assert set(fetched.missing) == {"resnet110", "ResNet50", "wrn_40_2", "vgg13"}  # not in the small archive
    assert leftovers(root) == [] and server.ranges == [None]
    # a second fetch checks the unpacked files against the record and downloads nothing
    quiet_fetch(server.url)
    assert server.ranges == [None]
    published_path("resnet56", "cifar100").write_bytes(b"altered")
    with pytest.raises(teachers.ChecksumError, match="changed since it was unpacked"):
        quiet_fetch(server.url)


def test_a_broken_download_resumes_with_a_range_request(root, server):
    server.cut_at = 5000
    with pytest.raises(DownloadError, match="again to resume") as info:
        quiet_fetch(server.url)
    assert not info.value.offline
    assert (root / "cifar_teachers.tar.part").stat().st_size == 5000
    assert not (root / "cifar_teachers").exists()
    fetched = quiet_fetch(server.url)
    assert server.ranges == [None, "bytes=5000-"]
    assert fetched.sha256 == hashlib.sha256(server.payload).hexdigest()
    assert published_path("resnet32x4", "cifar100").read_bytes() == TEACHERS["resnet32x4"]
    assert leftovers(root) == []


def test_a_server_that_ignores_ranges_restarts_the_part_file(root, server):
    root.mkdir()
    (root / "cifar_teachers.tar.part").write_bytes(b"stale bytes of an older attempt")
    server.ignore_ranges = True
    fetched = quiet_fetch(server.url)
    assert server.ranges == ["bytes=31-"]  # asked to resume; the 200 answer was the whole file
    assert fetched.sha256 == hashlib.sha256(server.payload).hexdigest()
    assert published_path("resnet56", "cifar100").read_bytes() == TEACHERS["resnet56"]


def test_a_complete_part_file_is_taken_as_is_on_a_416(root, server):
    root.mkdir()
    (root / "cifar_teachers.tar.part").write_bytes(server.payload)
    quiet_fetch(server.url)
    assert server.ranges == [f"bytes={len(server.payload)}-"]
    assert published_path("resnet56", "cifar100").read_bytes() == TEACHERS["resnet56"]


def test_a_changed_release_is_a_checksum_error_and_the_unpacked_teachers_stay(root, server):
    quiet_fetch(server.url)
    server.payload = release_tar({**TEACHERS, "resnet56": b"other weights " * 300})
    with pytest.raises(teachers.ChecksumError, match="recorded") as info:
        quiet_fetch(server.url, force=True)
    assert hashlib.sha256(server.payload).hexdigest() in str(info.value)
    assert published_path("resnet56", "cifar100").read_bytes() == TEACHERS["resnet56"]
    assert leftovers(root) == []
    # the same release again (--force) replaces the folder and matches the record
    server.payload = release_tar()
    assert not quiet_fetch(server.url, force=True).recorded


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 3
    return info


@pytest.mark.parametrize("bad", [
    [_file("../outside.pth")],  # path traversal
    [_link("cifar_teachers/evil", "/etc/passwd")],  # a link out of the folder
    [_link("cifar_teachers/up", "../../outside.pth")],
])
def test_unsafe_archives_leave_nothing_behind(root, server, tmp_path, bad):
    server.payload = release_tar(extra=bad)
    with pytest.raises(teachers.ChecksumError, match="unsafe|not a readable"):
        quiet_fetch(server.url)
    assert not (root / "cifar_teachers").exists() and leftovers(root) == []
    assert not (tmp_path / "outside.pth").exists() and not (root.parent / "outside.pth").exists()


def test_an_absolute_member_is_never_written_at_its_absolute_path(root, server, tmp_path):
    absolute = tmp_path / "absolute.pth"
    server.payload = release_tar(extra=[_file(str(absolute))])
    try:
        quiet_fetch(server.url)  # tarfile's data filter strips the leading "/": it lands inside the staging dir
    except teachers.ChecksumError:  # the fallback for Python < 3.10.12 refuses it
        assert not (root / "cifar_teachers").exists()
    assert not absolute.exists() and leftovers(root) == []


def test_an_archive_without_the_layout_is_refused(root, server):
    server.payload = release_tar(files={})  # an empty tar
    with pytest.raises(teachers.ChecksumError, match="not the release archive"):
        quiet_fetch(server.url)
    assert not (root / "cifar_teachers").exists() and leftovers(root) == []
    assert not (root / "cifar_teachers.json").exists()


def test_offline_names_the_url_and_the_place_and_exits_2(root, capsys):
    url = f"http://127.0.0.1:{free_port()}/cifar_teachers.tar"
    assert main(["teachers", "fetch", "cifar100", "--url", url, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert url in err and "Offline" in err and str(root / "cifar_teachers") in err and "$ADAKD_TEACHERS" in err
    assert not (root / "cifar_teachers").exists()


def test_a_refused_download_names_the_url_and_the_place(root, server, capsys):
    url = server.url.replace("cifar_teachers.tar", "moved.tar")
    assert main(["teachers", "fetch", "cifar100", "--url", url, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "answered 404" in err and url in err and f"-C {root}`" in err and "$ADAKD_TEACHERS" in err
    assert leftovers(root) == []


def test_tiny_imagenet_has_no_archive_url_and_says_where_the_file_goes(root, capsys):
    assert main(["teachers", "fetch", "tiny_imagenet"]) == 2
    err = capsys.readouterr().err
    assert str(root / "tiny_imagenet_teachers" / "ResNet18_vanilla" / "ti_res18") in err
    assert "releases/tag/checkpoints" in err


def test_cli_fetch_then_list(root, server, capsys):
    assert main(["teachers", "fetch", "cifar100", "--url", server.url, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(root / "cifar_teachers")
    assert f"sha256 {hashlib.sha256(server.payload).hexdigest()}" in captured.err
    assert main(["teachers", "list", "--json"]) == 0
    rows = {(r["dataset"], r["model"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows["cifar100", "resnet32x4"]["present"] and not rows["cifar100", "vgg13"]["present"]
    assert rows["cifar100", "resnet32x4"]["published_top1"] == 79.42
    assert rows["cifar100", "wrn_40_2"]["published_top1"] == 75.61
    assert rows["tiny_imagenet", "ResNet18"]["published_top1"] is None


# ------------------------------------------------------------------ teacher.checkpoint: published
def test_the_root_is_adakd_teachers_else_the_teacher_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("ADAKD_TEACHERS", raising=False)  # (conftest clears it)
    monkeypatch.setenv("ADAKD_CACHE", str(tmp_path / "cache"))
    assert teachers_root() == tmp_path / "cache" / "teachers"
    assert published_path("resnet32x4", "cifar100") == \
        tmp_path / "cache" / "teachers" / "cifar_teachers" / "resnet32x4_vanilla" / "ckpt_epoch_240.pth"
    monkeypatch.setenv("ADAKD_TEACHERS", str(tmp_path / "mdistiller" / "download_ckpts"))
    assert published_path("ResNet18", "tiny_imagenet") == \
        tmp_path / "mdistiller" / "download_ckpts" / "tiny_imagenet_teachers" / "ResNet18_vanilla" / "ti_res18"


def test_a_missing_published_file_is_one_error_naming_the_fetch_and_the_path(root):
    with pytest.raises(ConfigError) as info:
        existing_published_path("resnet32x4", "cifar100")
    assert "adakd teachers fetch cifar100" in str(info.value)
    assert str(root / "cifar_teachers" / "resnet32x4_vanilla" / "ckpt_epoch_240.pth") in str(info.value)
    with pytest.raises(ConfigError, match="no resnet8x4 teacher was released for cifar100; the release has resnet56"):
        published_path("resnet8x4", "cifar100")
    with pytest.raises(ConfigError, match="no published teachers for dataset 'fashion_mnist'"):
        published_path("resnet20", "fashion_mnist")


def test_only_published_takes_a_recipe_beside_it():
    TeacherConfig(name="resnet32x4", checkpoint="published", recipe="t.yaml")
    TeacherConfig(name="resnet32x4", checkpoint="published")
    with pytest.raises(ValueError, match="only `checkpoint: published` takes a recipe"):
        TeacherConfig(name="resnet32x4", checkpoint="weights.pth", recipe="t.yaml")


def test_published_file_present_is_used_absent_falls_back_to_the_recipe_with_one_line(root):
    cfg = load_config(REPO / "configs" / "cifar100" / "kd" / "res32x4_res8x4.yaml")
    assert (cfg.teacher.checkpoint, Path(cfg.teacher.recipe).name) == ("published", "resnet32x4.yaml")
    lines, trained = [], []
    path = teacher_checkpoint_path(cfg.teacher, cfg, trained.append, lines.append)
    assert len(trained) == 1 and trained[0].student.name == "resnet32x4"  # the recipe ran (here: recorded)
    assert path.name == "student.pt" and len(lines) == 2
    assert lines[0].startswith("published teacher resnet32x4 not found at ") and "adakd teachers fetch cifar100" \
        in lines[0] and "training it from recipe" in lines[0]
    published = published_path("resnet32x4", "cifar100")
    published.parent.mkdir(parents=True)
    published.write_bytes(b"weights")
    lines, trained = [], []
    assert teacher_checkpoint_path(cfg.teacher, cfg, trained.append, lines.append) == published
    assert trained == [] and lines == [f"using the published teacher {published}"]
    published.unlink()
    without_fallback = cfg.teacher.model_copy(update={"recipe": None})
    with pytest.raises(ConfigError, match="adakd teachers fetch cifar100"):
        teacher_checkpoint_path(without_fallback, cfg, trained.append, lines.append)
    assert trained == []


def test_sweeps_and_bases_keep_the_word_published(tmp_path):
    from adakd.tools.sweep import _fragment_paths

    (tmp_path / "published").write_text("a file named like the keyword")
    frag = _fragment_paths({"teacher": {"checkpoint": "published", "recipe": "t.yaml"}}, tmp_path)
    assert frag["teacher"] == {"checkpoint": "published", "recipe": str(tmp_path / "t.yaml")}
    (tmp_path / "c.yaml").write_text("name: c\ndata: {name: cifar100}\nstudent: {name: resnet8x4}\n"
                                     "teacher: {name: resnet32x4, checkpoint: published}\n")
    assert load_config(tmp_path / "c.yaml").teacher.checkpoint == "published"


# ------------------------------------------------------------------ a CIFAR-100 config's dry run
def save_reference_teacher(name: str, path: Path, seed: int = 0) -> dict:
    """A randomly initialised zoo model saved the reference way: {"model": their state_dict, "epoch": 240}."""
    import torch

    from adakd.models import build_model
    from adakd.models.foreign import to_reference_state_dict

    torch.manual_seed(seed)
    sd = to_reference_state_dict(build_model(name, num_classes=100))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd, "epoch": 240}, path)
    return sd


@pytest.fixture
def cifar100_root(tmp_path) -> Path:
    from test_data import write_cifar

    write_cifar(tmp_path / "cifar", "cifar100")
    return tmp_path / "cifar"


def dry_run(pair: str, cifar100_root: Path) -> list[str]:
    return ["train", str(REPO / "configs" / "cifar100" / "kd" / f"{pair}.yaml"), "--dry-run",
            f"data.root={cifar100_root}", "data.options.verify_checksum=false", "device=cpu"]


def test_cifar100_dry_run_loads_the_published_teacher_and_trains_none(root, cifar100_root, capsys):
    path = published_path("resnet32x4", "cifar100")
    save_reference_teacher("resnet32x4", path)
    recipe_runs = set(cache_root().glob("*"))
    assert main(dry_run("res32x4_res8x4", cifar100_root)) == 0
    err = capsys.readouterr().err
    assert f"teacher weights: using the published teacher {path}" in err
    assert set(cache_root().glob("*")) == recipe_runs  # no recipe run, not even its lock: nothing was trained
    # the file is really loaded: another architecture's weights at that path fail the dry run
    save_reference_teacher("resnet56", path)
    assert main(dry_run("res32x4_res8x4", cifar100_root)) == 2
    assert f"published teacher {path} does not fit" in capsys.readouterr().err


def test_cifar100_dry_run_without_the_file_names_the_recipe_fallback(root, cifar100_root, capsys):
    assert main(dry_run("res56_res20", cifar100_root)) == 0
    err = capsys.readouterr().err
    assert "teacher weights: published teacher resnet56 not found at" in err and "training it from recipe" in err
    assert not (root / "cifar_teachers").exists()


# ------------------------------------------------------------------ adakd eval: the published figure beside ours
def save_adakd_student(name: str, path: Path, cifar100_root: Path) -> None:
    import torch

    from adakd.data import DataConfig
    from adakd.engine.checkpoint import save_checkpoint
    from adakd.models import build_model

    torch.manual_seed(0)
    data = DataConfig(name="cifar100", root=str(cifar100_root), batch_size=2, options={"verify_checksum": False})
    meta = {"model": name, "kwargs": {}, "num_classes": 100, "in_channels": 3, "image_size": 32,
            "data": data.model_dump(mode="json")}
    save_checkpoint(path, {"kind": "student", "model": build_model(name, num_classes=100).state_dict(), "meta": meta})


def test_eval_of_a_teacher_architecture_prints_the_published_figure(tmp_path, cifar100_root, capsys):
    save_adakd_student("resnet56", tmp_path / "resnet56.pt", cifar100_root)
    assert main(["eval", str(tmp_path / "resnet56.pt"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet56 on cifar100 test (8 images): top-1 ")
    assert "(published teacher: top-1 72.34%, CRD table (last epoch))" in out
    assert main(["eval", str(tmp_path / "resnet56.pt"), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["published_top1"] == {"top1": 72.34, "source": "CRD table (last epoch)"}
    save_adakd_student("resnet20", tmp_path / "resnet20.pt", cifar100_root)  # a student of the tables: no figure
    assert main(["eval", str(tmp_path / "resnet20.pt"), "--device", "cpu"]) == 0
    assert "published" not in capsys.readouterr().out


def test_teachers_eval_measures_each_present_teacher_beside_its_published_figure(root, cifar100_root, capsys,
                                                                                 monkeypatch):
    import torch
    import torch.nn.functional as F

    from adakd.data import cifar as cifar_module
    from adakd.data import load_split

    monkeypatch.setattr(cifar_module, "check_md5", lambda *args: None)  # the tiny archive is not the published one
    from adakd.engine.checkpoint import load_model_weights
    from adakd.models import build_model

    for seed, name in enumerate(("resnet56", "wrn_40_2")):
        save_reference_teacher(name, published_path(name, "cifar100"), seed=seed)
    args = ["teachers", "eval", "cifar100", "--data-root", str(cifar100_root), "--device", "cpu", "--json"]
    assert main(args) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"resnet56", "wrn_40_2"}  # the present ones only
    assert (rows["resnet56"]["published_top1"], rows["wrn_40_2"]["published_top1"]) == (72.34, 75.61)
    # the measured loss is the loaded weights' own: recomputed here from the test split by hand
    images, labels, _ = load_split("cifar100", cifar100_root, "test", verify_checksum=False)
    mean = torch.tensor([0.5071, 0.4867, 0.4408]).view(1, 3, 1, 1)
    std = torch.tensor([0.2675, 0.2565, 0.2761]).view(1, 3, 1, 1)
    x = (torch.as_tensor(images).float() / 255 - mean) / std
    for name, row in rows.items():
        model = build_model(name, num_classes=100).eval()
        load_model_weights(model, published_path(name, "cifar100"))
        with torch.no_grad():
            logits = model(x)
        assert row["count"] == len(labels)
        assert row["loss"] == pytest.approx(F.cross_entropy(logits, torch.as_tensor(labels).long()).item(), rel=1e-4)
        assert row["top1"] == pytest.approx(100 * (logits.argmax(1) == torch.as_tensor(labels)).float().mean().item())
    assert main(args[:-1] + ["--model", "resnet32x4"]) == 2  # not here: the one error naming the fetch
    assert "adakd teachers fetch cifar100" in capsys.readouterr().err


def test_a_cifar100_kd_run_distils_from_the_published_teacher(root, cifar100_root, tmp_path):
    """A real (2-step) run of the shipped config: the teacher is the published file (its logits are the ones
    the distiller saw: the run's teacher equals a model loaded from that file), no recipe is trained."""
    import adakd

    path = published_path("resnet56", "cifar100")
    save_reference_teacher("resnet56", path)
    cfg = load_config(REPO / "configs" / "cifar100" / "kd" / "res56_res20.yaml",
                      [f"data.root={cifar100_root}", "data.options.verify_checksum=false", "data.batch_size=2",
                       "data.eval_batch_size=4", "train.epochs=1", "train.max_steps_per_epoch=2", "device=cpu",
                       "progress=false", f"run_dir={tmp_path / 'run'}", "train.precision=fp32",
                       "train.channels_last=false"])
    from adakd.engine.teacher_score import score_dir

    def recipe_runs() -> set[Path]:  # what cache_root() holds besides the teachers' test-accuracy cache
        return set(cache_root().glob("*")) - {score_dir()}

    before = recipe_runs()
    trainer = adakd.Trainer(cfg)
    trainer.run()
    assert recipe_runs() == before
    assert f"using the published teacher {path}" in (tmp_path / "run" / "train.log").read_text()
    reference = adakd.build_model("resnet56", num_classes=100, weights=path)
    import torch

    for ours, theirs in zip(trainer.teacher.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(ours.cpu(), theirs)


def test_eval_of_the_published_file_prints_the_published_figure(root, tmp_path, capsys, monkeypatch):
    from test_data import write_cifar

    from adakd.data import cifar as cifar_module

    monkeypatch.setattr(cifar_module, "check_md5", lambda *args: None)  # the tiny archive is not the published one
    write_cifar(tmp_path / "cifar", "cifar100", train_size=128)  # eval builds the training split: one batch of 128
    path = published_path("resnet32x4", "cifar100")
    save_reference_teacher("resnet32x4", path)
    assert main(["eval", str(path), "--model", "resnet32x4", "--data", "cifar100", "--data-root",
                 str(tmp_path / "cifar"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet32x4 on cifar100 test (8 images): top-1 ")
    assert out.rstrip().endswith("(published teacher: top-1 79.42%, CRD table (last epoch))")


def test_the_analysis_plots_find_the_teacher_a_run_used(root):
    from adakd.tools.report.analysis_plots import _teacher_checkpoint

    cfg = load_config(REPO / "configs" / "cifar100" / "kd" / "res32x4_res8x4.yaml")
    with pytest.raises(AdakdError, match="cifar100-teacher-resnet32x4-.*student.pt is missing"):
        _teacher_checkpoint(cfg)  # published absent: the run fell back to its recipe's cached teacher
    path = published_path("resnet32x4", "cifar100")
    save_reference_teacher("resnet32x4", path)
    assert _teacher_checkpoint(cfg) == path
