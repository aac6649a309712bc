"""The ``adakd`` command line: thin wrappers over the Python API.

    adakd train CONFIG [key=value ...] [--resume] [--dry-run]
    adakd eval RUN_DIR_OR_CHECKPOINT [--split test] [--json]
    adakd plot RUN_DIR
    adakd list models|distillers|strategies|datasets [--json]

User errors print one message and exit with code 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from .errors import AdakdError

LIST_KINDS = ("models", "distillers", "strategies", "datasets")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adakd", description="Knowledge distillation for PyTorch (ABL, SAKD, AEKT "
                                     "and the classic losses).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a teacher or distil a student from a config")
    p.add_argument("config", help="YAML config (e.g. configs/fashion_mnist/kd.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seed=1 train.epochs=3 data.root=~/data")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument("--dry-run", action="store_true", help="validate the config and print it; train nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = sub.add_parser("eval", help="top-1/top-5 of a run directory or checkpoint on the test split")
    p.add_argument("target", help="run directory or .pt checkpoint")
    p.add_argument("--which", choices=["final", "best", "last"], default="final",
                   help="for a run directory: final student (default), best epoch, or last training state")
    p.add_argument("--data-root", default=None, help="where the dataset lives, if not where the run found it")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("plot", help="curves and method plots (ABL gammas, SAKD routing, AEKT relations) of a run")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/plots)")

    p = sub.add_parser("list", help="what is available")
    p.add_argument("kind", choices=LIST_KINDS)
    p.add_argument("--json", action="store_true")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from .api import train
    from .config import dump_config, load_config
    from .report.summary import format_summary

    overrides = list(args.overrides) + (["resume=true"] if args.resume else [])
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        from .api import check_config

        check_config(cfg)
        print(dump_config(cfg), end="")
        print("config OK", file=sys.stderr)
        return 0
    summary = train(cfg)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .api import evaluate_checkpoint

    result = evaluate_checkpoint(args.target, which=args.which, data_root=args.data_root, device=args.device)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} on {result['dataset']} {result['split']} ({result['count']} images): "
              f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .report.plots import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)
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


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "list": cmd_list}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    debug = args.debug or bool(os.environ.get("ADAKD_DEBUG"))
    try:
        return COMMANDS[args.command](args)
    except AdakdError as exc:
        if debug:
            raise
        print(f"adakd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("adakd: interrupted", file=sys.stderr)
        return 130


def entry(argv: Any = None) -> None:
    sys.exit(main(argv))


if __name__ == "__main__":
    entry()
