"""A bench's result as a text table, as a JSON file, and its progress lines."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ...runtime.timing import format_ms
from ...runtime.atomic import atomic_write_json


def format_table(result: dict[str, Any]) -> str:
    """The result as a text table (one row per case, batch and path), then the ratios."""
    env = result["environment"]
    s = result["settings"]
    cpu_class = f"; CPU class {env['cpu_class']}" if "cpu_class" in env else ""  # older JSON: none
    lines = [f"adakd bench: teacher {s['teacher']} -> student {s['student']}, {s['in_channels']}x{s['image_size']}x"
             f"{s['image_size']} random data, {s['num_classes']} classes; {env['device']} ({_cpu_text(env)}"
             f"{', ' + env['gpu'] if 'gpu' in env else ''}){cpu_class}, {env['torch_threads']} threads, torch {env['torch']}, "
             f"load {env.get('load_average')} -> {env.get('load_average_after')}"]
    for name, p in result["paths"].items():
        lines.append(f"  {name}: {_auto(p['precision'])}, channels_last {_auto(p['channels_last'])}, compile "
                     f"{p['compile_mode'] if p['compile'] else 'off'}, data {p['data']}, "
                     f"{'host sync every step' if p['sync_every_step'] else 'no per-step host sync'}")
    if s.get("candidates") and "fast" in result["paths"]:
        lines.append("  fp32/bf16 NCHW/CL: the fast path under each candidate precision x memory format")
    width = max([18] + [len(r["case"]) for r in result["results"]])
    pw = max([6] + [len(n) for r in result["results"] for n in r.get("paths", {})])
    header = f"{'case':<{width}} {'batch':>5} {'path':<{pw}} {'images/s [q1, q3]':>24} {'step ms':>8} " \
             f"{'data img/s':>11} {'peak MB':>8} {'loss@1':>8}"
    lines += ["", header, "-" * len(header)]
    notes = []
    for r in result["results"]:
        if "skipped" in r:
            notes.append(f"{r['case']} (batch {r['batch_size']}): skipped: {r['skipped']}")
            continue
        for name, p in r["paths"].items():
            ips = p["images_per_s"]
            rate = f"{ips['median']:.1f} [{ips['q1']:.1f}, {ips['q3']:.1f}]"
            peak = "-" if p["peak_mb"] is None else f"{p['peak_mb']:.0f}"
            lines.append(f"{r['case']:<{width}} {r['batch_size']:>5} {name:<{pw}} {rate:>24} {p['step_ms']:>8.1f} "
                         f"{p['data_images_per_s']:>11,.0f} {peak:>8} {p['first_step_loss']:>8.4f}")
        if "fast_path" in r:
            fp = r["fast_path"]
            how = {"probe": "probe picked", "env": "$ADAKD_PRECISION set", "config": "set"}.get(fp["source"], fp["source"])
            figures = ", ".join(f"{k} {format_ms(v)} ms" for k, v in fp["probe_step_ms"].items())
            notes.append(f"{r['case']} (batch {r['batch_size']}): fast = {fp['precision']}"
                         f"{' + channels_last' if fp['channels_last'] else ''} ({how}{': ' + figures if figures else ''})"
                         + (f"; fastest here: {r['fastest_path']}" if "fastest_path" in r else ""))
        if "speedup" in r:
            notes.append(f"{r['case']} (batch {r['batch_size']}): fast/eager = {r['speedup']:.2f}x; first-step loss "
                         f"relative difference {r['first_step_loss_rel_diff']:.2e}")
        if "overhead" in r:
            notes.append(f"{r['case']} (batch {r['batch_size']}): step time vs {r['baseline']}: " + ", ".join(
                f"{p} {v:.2f}x" for p, v in r["overhead"].items()))
    return "\n".join(lines + [""] + notes)


def _cpu_text(env: dict[str, Any]) -> str:
    """"AMD EPYC; AVX512, avx512_bf16, no AMX" (older JSON without flags: the model alone)."""
    flags = env.get("cpu_flags")
    if not flags:
        return env["cpu"]
    have = [f for f in ("avx512_bf16", "avx512f", "avx2") if flags.get(f)]
    amx = "AMX bf16" if flags.get("amx_bf16") else "no AMX"
    limits = env.get("isa_limits") or {}
    capped = f"; instruction set capped: {', '.join(f'{k}={v}' for k, v in sorted(limits.items()))}" if limits else ""
    return f"{env['cpu']}; {env.get('cpu_capability')}, {', '.join(have + [amx])}{capped}"


def _auto(value: Any) -> str:
    return "auto (probed per case)" if value == "auto" else str(value)


def write_json(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    return atomic_write_json(path, result)


def progress_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


__all__ = ["format_table", "write_json", "progress_log"]
