"""The ``adakd`` command line: thin wrappers over the Python API.

    adakd train CONFIG [key=value ...] [--resume] [--dry-run]
    adakd eval RUN_DIR_OR_CHECKPOINT [--split test|val] [--json]
    adakd eval WEIGHTS_FILE --model NAME --data DATASET [--format auto|reference|...]   (a file without our metadata)
    adakd plot RUN_DIR [RUN_DIR ...] [--out DIR] [--analysis]
    adakd export RUN_DIR --format onnx|torchscript|safetensors|reference [--out PATH] [--which final|best|last]
    adakd list models|distillers|strategies|datasets [--json]
    adakd sweep SWEEP.yaml [--parallel N] [--dry-run]
    adakd cache build CONFIG [key=value ...]  |  adakd cache info PATH [--json]
    adakd report SWEEP.yaml|RUNS_DIR|STUDY_DIR [--out DIR]
    adakd record SWEEP.yaml|RUNS_DIR [-o studies/NAME/runs.jsonl.gz]
    adakd teachers list [--json]  |  adakd teachers fetch cifar100 [--url URL] [--force]
    adakd teachers eval cifar100 [--model resnet32x4 ...] [--data-root DIR] [--json]
    adakd tune CONFIG --space SPACE.yaml [key=value ...] [--trials N] [--storage URL] [--out DIR]
    adakd bench [--suite adaptive] [--batch-size 64 128] [--compile] [--json] [--out FILE]
    adakd bench --against reference --reference-path MDISTILLER [--methods kd dkd at] [--windows 5]

User errors print one message and exit with code 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import AdakdError, ConfigError

LIST_KINDS = ("models", "distillers", "strategies", "datasets")
#: OSError numbers that mean "the output location cannot take more writes" (reported without a traceback).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOTDIR}


def _version() -> str:
    from . import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adakd", description="Knowledge distillation for PyTorch (ABL, SAKD, AEKT "
                                     "and the classic losses).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"adakd {_version()}")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="a plugin to import first (dotted module or .py file) that registers your own models, "
                             "losses, strategies or datasets; repeatable (configs can also say imports: [...])")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="train, eval, plot, export, bench, list, sweep, tune, report, record, cache, teachers "
                                     "(adakd COMMAND -h)")

    p = sub.add_parser("train", help="train a teacher or distil a student from a config")
    p.add_argument("config", help="YAML config (e.g. configs/fashion_mnist/kd.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seed=1 train.epochs=3 data.root=~/data")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument("--allow-changes", nargs="+", default=[], metavar="KEY",
                   help="with --resume: config keys that may differ from the run's own (e.g. train.epochs)")
    p.add_argument("--dry-run", action="store_true", help="validate the config and print it; train nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = sub.add_parser("eval", help="top-1/top-5 of a run directory or checkpoint on the test (or validation) split")
    p.add_argument("target", help="run directory or .pt checkpoint")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="val: the validation split the run held out of its training set (data.val_fraction); "
                        "make choices (meta lr, k, ...) on it, not on test")
    p.add_argument("--which", choices=["final", "best", "last"], default="final",
                   help="for a run directory: final student (default), best epoch, or last training state")
    p.add_argument("--data-root", default=None, help="where the dataset lives, if not where the run found it")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.add_argument("--model", default=None, help="for a weight file without our metadata (a RepDistiller/mdistiller "
                   "ckpt_epoch_240.pth, a state_dict): the zoo architecture, e.g. resnet32x4")
    p.add_argument("--model-kwargs", default="{}", help="with --model: YAML mapping of model builder options, "
                   "e.g. \"{widths: [16, 32, 64]}\"")
    p.add_argument("--data", default=None, help="with --model: the dataset to evaluate on, e.g. cifar100")
    p.add_argument("--format", default="auto", choices=["auto", "adakd", "reference", "repdistiller", "mdistiller",
                                                        "torchvision"],
                   help="with --model: the weights' layout (default: detected)")

    p = sub.add_parser("plot", help="curves and method plots (ABL gammas, SAKD routing, AEKT relations) of a run; "
                       "with several runs, their curves on one figure")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/plots; for several runs "
                   "plots-compare/ in the folder that holds them)")
    p.add_argument("--analysis", action="store_true",
                   help="also compute the teacher-vs-student logit-correlation difference (reads the test split)")
    p.add_argument("--which", choices=["final", "best", "last"], default="final", help="student checkpoint for --analysis")
    p.add_argument("--data-root", default=None, help="where the dataset lives, if not where the run found it")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("export", help="the distilled student alone as ONNX, TorchScript, safetensors or the "
                       "reference layout (+ JSON sidecar)")
    p.add_argument("target", help="run directory or student .pt checkpoint")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors", "reference"],
                   help="reference: {'model': state_dict} with RepDistiller/mdistiller's key names, for their tools")
    p.add_argument("--out", default=None, help="output file (default RUN_DIR/export/student.<ext>)")
    p.add_argument("--which", choices=["final", "best", "last"], default="final",
                   help="final student (default), best epoch, or the last training state of an unfinished run")
    p.add_argument("--json", action="store_true", help="print the sidecar as JSON")

    p = sub.add_parser("bench", help="training-step throughput: eager fp32 baseline vs the fast path (random data)")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher-kwargs", default="{}", help="YAML mapping of model builder options, e.g. {widths: [..]}")
    p.add_argument("--student-kwargs", default="{}", help="YAML mapping of model builder options")
    p.add_argument("--losses", default="kd", help="YAML: a name, a list or {name: {options}} (default kd)")
    p.add_argument("--strategy", default="standard", help="any registered strategy (e.g. sakd, abl)")
    p.add_argument("--strategy-options", default="{}", help="YAML mapping of strategy options")
    p.add_argument("--phase", default=None, help="the strategy phase to time (default: its last, e.g. abl: search)")
    p.add_argument("--suite", choices=["kd", "adaptive"], default=None,
                   help="preset cases instead: adaptive = SAKD, ABL search/retrain over KD, AEKT over DKD")
    p.add_argument("--batch-size", type=int, nargs="+", default=[64])
    p.add_argument("--device", default="auto")
    p.add_argument("--paths", nargs="+", choices=["eager", "fast"], default=["eager", "fast"])
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="of the fast path")
    p.add_argument("--channels-last", choices=["auto", "true", "false"], default="auto", help="of the fast path")
    p.add_argument("--compile", action="store_true", help="torch.compile the fast path (minutes on CPU)")
    p.add_argument("--compile-mode", default="auto")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed windows (the first compiles)")
    p.add_argument("--repeats", "--windows", type=int, default=7, help="timed windows per path (interleaved)")
    p.add_argument("--window", type=int, default=1, help="steps per timed window")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    p.add_argument("--against", choices=["reference"], default=None,
                   help="time the reference code base's step (mdistiller) beside ours, per method")
    p.add_argument("--reference-path", default=os.environ.get("ADAKD_REFERENCE_PATH"),
                   help="an mdistiller checkout, for --against reference (default $ADAKD_REFERENCE_PATH)")
    p.add_argument("--methods", nargs="+", default=["kd", "dkd", "at"],
                   help="with --against reference: the methods to compare (default kd dkd at)")
    p.add_argument("--configs", default="configs/cifar100",
                   help="with --against reference: our configs, <DIR>/<method>/<pair>.yaml (default configs/cifar100)")

    p = sub.add_parser("list", help="what is available")
    p.add_argument("kind", choices=LIST_KINDS)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sweep", help="run a grid of configs x seeds (resumable), one after another or N at a time")
    p.add_argument("sweep", help="sweep file (e.g. studies/fmnist-methods/sweep.yaml)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (subprocesses; default 1)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state; train nothing")

    p = sub.add_parser("tune", help="search hyperparameters with Optuna (trials are runs, scored on the validation "
                       "split); every worker on the same --storage joins the same study")
    p.add_argument("config", help="the base config (needs data.val_fraction > 0)")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the base config, e.g. train.epochs=5")
    p.add_argument("--space", required=True, help="search file: dotted keys -> ranges/choices, trials, sampler, "
                   "pruner (see adakd/tools/tune/space.py)")
    p.add_argument("--trials", type=int, default=None, help="finished trials the study stops at (default: the file's)")
    p.add_argument("--storage", default=None, help="study database URL shared by workers, e.g. "
                   "postgresql://user@host/db (default: sqlite file in the study folder)")
    p.add_argument("--study", default=None, help="study name (default: the file's `study:` or its name)")
    p.add_argument("--out", default=None, help="study folder: trial runs, best.yaml (default OUTPUT_DIR/tune-STUDY)")

    p = sub.add_parser("cache", help="teacher-output cache: build it once for a config (resumable; torchrun: views "
                       "split over ranks), or describe one")
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    c = csub.add_parser("build", help="compute the teacher's outputs over the config's K augmented views")
    c.add_argument("config", help="a distillation config with a teacher (teacher.cache: auto or PATH)")
    c.add_argument("overrides", nargs="*", help="dotted overrides, e.g. teacher.cache_views=8")
    c = csub.add_parser("info", help="what a cache holds, how much is built, whether its files verify")
    c.add_argument("path", help="the cache directory")
    c.add_argument("--json", action="store_true")

    p = sub.add_parser("teachers", help="the published teachers of the tables: list them, fetch a release")
    tsub = p.add_subparsers(dest="teachers_command", required=True, metavar="ACTION")
    t = tsub.add_parser("list", help="which published teachers exist, which are here, their published top-1")
    t.add_argument("--json", action="store_true")
    t = tsub.add_parser("fetch", help="download a release archive (resumable, sha256-checked), unpack it atomically "
                        "under $ADAKD_TEACHERS (else the teacher cache)")
    t.add_argument("dataset", help="cifar100 (the CRD/mdistiller teachers) or tiny_imagenet")
    t.add_argument("--url", default=None, help="the archive's URL, if not the release's (a mirror)")
    t.add_argument("--force", action="store_true", help="download and unpack again although the folder is there")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t = tsub.add_parser("eval", help="top-1 of the published teachers here on the test split, beside the published "
                        "figure (checks your copy of the teachers and of the data)")
    t.add_argument("dataset", help="cifar100 or tiny_imagenet")
    t.add_argument("--model", nargs="+", default=None, help="only these teachers (default: every one present)")
    t.add_argument("--data-root", default=None, help="where the dataset lives ($ADAKD_DATA, ... otherwise)")
    t.add_argument("--device", default="auto")
    t.add_argument("--json", action="store_true")

    p = sub.add_parser("report", help="results table (mean +- std over seeds, gains, published numbers) of runs")
    p.add_argument("target", help="sweep file, a folder holding run directories, a study folder (its runs.jsonl.gz), "
                   "or an `adakd tune` study folder (best trial, trials table, plots)")
    p.add_argument("--out", default=None, help="where results.md / results.csv go (default: beside the runs)")

    p = sub.add_parser("record", help="a study's compact record: every run directory as one JSON line (config, "
                       "labels, summary, metrics), from which `adakd report STUDY_DIR` rebuilds the tables")
    p.add_argument("target", help="sweep file (its output_dir) or a folder holding run directories")
    p.add_argument("-o", "--out", default=None,
                   help="the record (.jsonl.gz, or .jsonl for plain text; default: runs.jsonl.gz in the study folder)")
    p.add_argument("--replace", action="store_true",
                   help="write only the run directories on disk (default: merge into an existing record, keeping "
                        "the runs it has that are not on disk)")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from .api import train
    from .config import dump_config, load_config
    from .tools.report.summary import format_summary

    # `--allow-changes KEY train.epochs=20`: argparse's nargs="+" takes the override too; a KEY never holds "="
    allowed = [k for k in args.allow_changes if "=" not in k]
    overrides = list(args.overrides) + [k for k in args.allow_changes if "=" in k]
    overrides += ["resume=true"] if args.resume else []
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        from .api import check_config

        built = check_config(cfg)
        print(dump_config(cfg), end="")
        print(f"config OK: {built['dataset']} {'x'.join(map(str, built['image_shape']))}, {built['classes']} classes; "
              f"student {built['student']}, teacher {built['teacher']}, losses {built['losses'] or ['ce only']}, "
              f"strategy {built['strategy']} (phases {', '.join(built['phases'])}): every part built and stepped "
              "once on a random batch, data files found", file=sys.stderr)
        if built.get("teacher_weights"):
            print(f"teacher weights: {built['teacher_weights']}", file=sys.stderr)
        return 0
    if allowed and not args.resume:
        raise ConfigError("--allow-changes only applies with --resume.")
    summary = train(cfg, allow_changes=tuple(allowed))
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .api import evaluate_checkpoint
    from .tools.teachers import published_top1

    import yaml

    try:
        model_kwargs = yaml.safe_load(args.model_kwargs) or {}
    except yaml.YAMLError:
        model_kwargs = None
    if not isinstance(model_kwargs, dict):
        raise ConfigError(f"--model-kwargs {args.model_kwargs!r} must be a YAML mapping, e.g. \"{{widths: [16, 32, 64]}}\".")
    result = evaluate_checkpoint(args.target, which=args.which, data_root=args.data_root, device=args.device,
                                 split=args.split, model=args.model, data=args.data, weights_format=args.format,
                                 model_kwargs=model_kwargs)
    published = published_top1(result["model"], result["dataset"]) if result["split"] == "test" else None
    if published is not None:  # a teacher architecture of the tables: their figure beside ours
        result["published_top1"] = {"top1": published.top1, "source": published.source}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} on {result['dataset']} {result['split']} ({result['count']} images): "
              f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}"
              + (f"  (published teacher: top-1 {published.top1:.2f}%, {published.source})" if published else ""))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .tools.report.plots import plot_run

    if args.analysis:
        from .tools.report.analysis_plots import compute_logit_correlation

        for run_dir in args.run_dirs:
            result = compute_logit_correlation(run_dir, which=args.which, data_root=args.data_root, device=args.device)
            print(f"{run_dir}: mean |R_teacher - R_student| {result['mean_final']:.4f} over {result['samples']} "
                  f"test images -> {result['path']}", file=sys.stderr)
    if len(args.run_dirs) == 1:
        paths = plot_run(args.run_dirs[0], args.out)
    else:
        from .tools.report.compare_plots import plot_compare

        paths = plot_compare(args.run_dirs, args.out or _common_parent(args.run_dirs) / "plots-compare")
        if args.analysis:
            for run_dir in args.run_dirs:
                paths += plot_run(run_dir)
    for path in paths:
        print(path)
    return 0


def _common_parent(paths: Sequence[str]) -> Path:
    """The folder that holds every run of ``paths`` (where a comparison's plots go by default)."""
    parents = [str(Path(p).expanduser().resolve().parent) for p in paths]
    return Path(os.path.commonpath(parents))


def cmd_export(args: argparse.Namespace) -> int:
    from .tools.export import export_student

    result = export_student(args.target, args.format, out=args.out, which=args.which)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    check = result["check"]
    how = (f"max |diff| {check['max_abs_diff']:.2e} <= {check['tolerance']:.2e} ({check['backend']})"
           if check["max_abs_diff"] is not None else check.get("note", check["backend"]))
    print(f"{result['path']}\n{result['sidecar']}\ncheck: {how}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from . import api  # noqa: F401  (imports every registry)
    from .registry import DATASETS, DISTILLERS, MODELS, STRATEGIES

    registry = {"models": MODELS, "distillers": DISTILLERS, "strategies": STRATEGIES, "datasets": DATASETS}[args.kind]
    entries = registry.entries()
    if args.json:
        print(json.dumps([e.as_json() for e in entries], indent=2))
        return 0
    width = max((len(e.name) for e in entries), default=4)
    for e in entries:
        line = f"{e.name.ljust(width)}  {e.description}"
        if e.paper:
            line += f"  [{e.paper}]"
        print(line)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .tools.bench import format_table, progress_log, run_bench, settings_from_cli, write_json

    settings, cases = settings_from_cli(args)
    if args.against == "reference":
        from .tools.bench import format_against_table, run_against_reference

        result = run_against_reference(settings, args.methods, args.reference_path, args.configs, log=progress_log)
        if args.out:
            write_json(result, args.out)
        print(json.dumps(result, indent=2) if args.json else format_against_table(result))
        return 0
    result = run_bench(settings, cases, log=progress_log)
    if args.out:
        write_json(result, args.out)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .tools.sweep import describe, load_sweep, run_sweep

    sweep = load_sweep(args.sweep)
    if args.dry_run:
        print("\n".join(describe(sweep)))
        return 0
    outcomes = run_sweep(sweep, parallel=args.parallel)
    failed = [o.name for o in outcomes if o.status == "failed"]
    print(f"sweep {sweep.name}: {len(outcomes) - len(failed)}/{len(outcomes)} runs finished"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f". Table: adakd report {args.sweep}")
    return 1 if failed else 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .tools.tune.study import run_tune

    result = run_tune(args.config, args.space, list(args.overrides), storage=args.storage, out=args.out,
                      trials=args.trials, study_name=args.study, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .tools.cache import cache_command

    return cache_command(args)


def cmd_teachers(args: argparse.Namespace) -> int:
    from .tools import teachers

    if args.teachers_command == "list":
        rows = teachers.listing()
        print(json.dumps(rows, indent=2) if args.json else teachers.format_listing(rows))
        return 0
    if args.teachers_command == "eval":
        rows = teachers.evaluate_published(args.dataset, args.model, args.data_root, args.device)
        print(json.dumps(rows, indent=2) if args.json else teachers.format_evaluation(rows))
        return 0
    fetched = teachers.fetch(args.dataset, url=args.url, force=args.force, progress=not args.no_progress,
                             log=lambda m: print(m, file=sys.stderr, flush=True))
    if fetched.missing:
        print(f"note: the archive holds no file for {', '.join(fetched.missing)}", file=sys.stderr)
    print(fetched.folder)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .tools.report.table import build_report

    markdown, files = build_report(args.target, args.out)
    print(markdown, end="")
    print("written: " + ", ".join(str(f) for f in files), file=sys.stderr)
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from .tools.report.record import default_record_path, write_record
    from .tools.report.table import runs_root

    root = runs_root(args.target)
    out = Path(args.out) if args.out else default_record_path(args.target, root)
    path, count, kept = write_record(root, out, replace=args.replace)
    merged = f", {kept} of them kept from the record (not on disk)" if kept else ""
    print(f"{count} runs of {root} -> {path} ({path.stat().st_size / 1e6:.2f} MB{merged})")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "export": cmd_export, "list": cmd_list,
            "bench": cmd_bench, "sweep": cmd_sweep, "tune": cmd_tune, "report": cmd_report, "record": cmd_record,
            "cache": cmd_cache, "teachers": cmd_teachers}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # dotted overrides after an option (`train CONFIG --resume seed=3`) are overrides too
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    debug = args.debug or bool(os.environ.get("ADAKD_DEBUG"))
    try:
        from .plugins import load_plugins

        load_plugins(args.imports)  # installed adakd.plugins entry points, then --import MODULE ...
        return COMMANDS[args.command](args)
    except AdakdError as exc:
        if debug:
            raise
        print(f"adakd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("adakd: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from .plugins import component_error

        error = None if debug else component_error(exc)  # raised inside a plugin's model, loss, strategy, dataset
        if error is not None:
            print(f"adakd: error: {error}", file=sys.stderr)
            return error.exit_code
        if not isinstance(exc, OSError) or debug or exc.errno not in _WRITE_ERRNOS:
            raise
        # a full, read-only or vanished output location while writing records
        where = f" {exc.filename}" if exc.filename else ""
        print(f"adakd: error: cannot write{where}: {exc.strerror or exc}. Free disk space or choose a writable "
              "output_dir=/run_dir=; checkpoints already written are intact (--resume continues).", file=sys.stderr)
        return 2


def entry(argv: Any = None) -> None:
    """The console script. A torchrun worker leaves with ``os._exit`` once its work is saved and the
    process group is destroyed: interpreter finalisation can otherwise abort in gloo's C++ destructors
    ("terminate called without an active exception", SIGABRT; seen once in CI on a finished run), which
    torchrun reports as a failed job although every file was written.

    Before leaving, ``gc.freeze()``: the interpreter's finalisation otherwise runs full garbage collections
    over every object torch and its compiler stack created (1-7 s on a 2-core CPU, more than a short run's
    checkpoints); frozen objects are left to the OS. atexit handlers, flushes and file closes still run."""
    code = main(argv)
    import gc

    gc.freeze()
    from .runtime.distributed import launched_by_torchrun

    if launched_by_torchrun():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
