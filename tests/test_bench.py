"""`adakd bench` and the fast path (engine/fast.py): the harness runs and reports its fields, the fast
path computes the same step as the eager path (bf16 tolerance), the fused optimiser equals the
hand-written SGD update, and torch.compile of forward_features runs and matches eager."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from adakd.tools.bench import BenchCase, BenchSettings, Rig, random_dataset, resolve_paths, run_bench
from adakd.cli import main
from adakd.config import validate
from adakd.runtime.device import cpu_info
from adakd.tools.bench.environment import cpu_class
from adakd.engine.fast import compile_forward_features, prefer_fused, resolve_compile_mode, set_inductor_cache

#: Tiny models, one CPU thread (two threads thrash on a shared, oversubscribed 2-core machine).
TINY = dict(teacher="resnet8", student="resnet8", teacher_kwargs={"widths": [8, 8, 16]},
            student_kwargs={"widths": [4, 8, 8]}, num_classes=10, image_size=16, dataset_size=32, data_batches=2,
            threads=1)
CPU = torch.device("cpu")


def test_cli_bench_reports_the_json_fields(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ADAKD_PRECISION", "fp32")  # no probe here (test_bench_times_every_candidate has one)
    monkeypatch.delenv("ADAKD_CHANNELS_LAST", raising=False)
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    rc = main(["bench", "--teacher", "resnet8", "--student", "resnet8", "--teacher-kwargs", "{widths: [8, 8, 16]}",
               "--student-kwargs", "{widths: [4, 8, 8]}", "--num-classes", "10", "--image-size", "16",
               "--batch-size", "8", "--warmup", "1", "--repeats", "2", "--device", "cpu", "--threads", "1",
               "--losses", "{kd: {temperature: 2}}", "--json", "--out", str(out)])
    assert torch.get_num_threads() == threads  # restored
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    for key in ("settings", "environment", "paths", "results"):
        assert key in printed
    env = printed["environment"]
    assert {"cpu", "cpu_flags", "cpu_capability", "torch_threads", "load_average", "torch"} <= set(env)
    assert env["cpu_class"] == cpu_class(cpu_info())
    assert env["cpu"] == cpu_info()["model"] and env["cpu"] and env["torch"] == torch.__version__
    assert set(env["cpu_flags"]) >= {"amx_bf16", "avx512f", "avx512_bf16", "avx2"}
    assert all(isinstance(v, bool) for v in env["cpu_flags"].values())
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert printed["paths"]["eager"]["precision"] == "fp32" and printed["paths"]["eager"]["sync_every_step"]
    assert printed["settings"]["student_kwargs"] == {"widths": [4, 8, 8]} and printed["environment"]["torch_threads"] == 1
    (record,) = printed["results"]
    assert record["case"] == "kd" and record["batch_size"] == 8 and record["phase"] == "train"
    # $ADAKD_PRECISION=fp32: the fast path is fp32 NCHW without a probe; the other candidates beside it
    assert record["fast_path"] == {"precision": "fp32", "channels_last": False, "source": "env", "probe_step_ms": {}}
    assert set(record["paths"]) == {"eager", "fast", "fp32 CL", "bf16 NCHW", "bf16 CL"}
    assert record["fastest_path"] in set(record["paths"]) - {"eager"}
    assert record["losses"] == {"kd": {"temperature": 2}}
    for path in record["paths"]:
        p = record["paths"][path]
        ips = p["images_per_s"]
        assert 0 < ips["min"] <= ips["q1"] <= ips["median"] <= ips["q3"] <= ips["max"]
        assert p["step_ms"] == pytest.approx(1000 * 8 / ips["median"])
        assert p["data_images_per_s"] > 0 and np.isfinite(p["first_step_loss"]) and np.isfinite(p["mean_loss"])
        assert p["peak_mb"] is None or p["peak_mb"] >= 0
    medians = {k: record["paths"][k]["images_per_s"]["median"] for k in ("eager", "fast")}
    assert record["speedup"] == pytest.approx(medians["fast"] / medians["eager"])
    assert record["first_step_loss_rel_diff"] < 3e-2  # the same first step on both paths (bf16 noise at most)


def test_bench_times_every_candidate_beside_the_probes_pick(monkeypatch, capsys):
    from adakd.tools.bench import format_table
    from adakd.runtime import timing

    monkeypatch.delenv("ADAKD_PRECISION", raising=False)
    monkeypatch.delenv("ADAKD_CHANNELS_LAST", raising=False)
    calls = []

    def fake(build, options, **kw):  # the probe builds real rigs; its verdict: bf16 CL
        step = build(options[-1])
        step()
        calls.append([c.label for c in options])
        return {c: (0.5 if c.label == "bf16 CL" else 1.0) for c in options}

    monkeypatch.setattr("adakd.tools.bench.paths.time_steps", fake)
    settings = BenchSettings(**TINY, batch_sizes=[8], warmup=1, repeats=1, device="cpu")
    result = run_bench(settings)
    (record,) = result["results"]
    assert calls == [["fp32 NCHW", "fp32 CL", "bf16 NCHW", "bf16 CL"]]  # the probe, never its cache
    assert not timing.cache_dir().exists()
    assert record["fast_path"]["precision"] == "bf16" and record["fast_path"]["channels_last"] is True
    assert record["fast_path"]["probe_step_ms"] == {"fp32 NCHW": 1000, "fp32 CL": 1000, "bf16 NCHW": 1000, "bf16 CL": 500}
    paths = record["paths"]
    assert list(paths) == ["eager", "fast", "fp32 NCHW", "fp32 CL", "bf16 NCHW"]  # the pick is "fast", not twice
    assert (paths["fast"]["precision"], paths["fast"]["channels_last"]) == ("bf16", True)
    assert (paths["fp32 CL"]["precision"], paths["fp32 CL"]["channels_last"]) == ("fp32", True)
    assert result["paths"]["fast"]["precision"] == "auto"
    table = format_table(result)
    assert cpu_info()["model"] in table.splitlines()[0] and "fp32 NCHW" in table
    assert "fast = bf16 + channels_last (probe picked: fp32 NCHW 1000 ms" in table
    settings.candidates = False
    monkeypatch.setenv("ADAKD_PRECISION", "fp32")
    (record,) = run_bench(settings)["results"]
    assert list(record["paths"]) == ["eager", "fast"] and len(calls) == 1


def test_unregistered_strategy_is_skipped_and_overhead_is_a_step_time_ratio():
    settings = BenchSettings(**TINY, batch_sizes=[8], paths=("fast",), warmup=1, repeats=2, device="cpu",
                             precision="fp32", channels_last=False, candidates=False)
    cases = [BenchCase("kd"), BenchCase("kd-again", baseline="kd"),
             BenchCase("later", strategy="not-written-yet", baseline="kd")]
    result = run_bench(settings, cases)
    kd, again, later = result["results"]
    assert "not registered" in later["skipped"] and "paths" not in later and "overhead" not in later
    base, case = kd["paths"]["fast"]["images_per_s"]["median"], again["paths"]["fast"]["images_per_s"]["median"]
    assert again["overhead"] == {"fast": pytest.approx(base / case)}
    assert "speedup" not in kd  # one path only


def _golden_kd_loss(student: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                    weight: float = 0.9, temperature: float = 4.0) -> float:
    """CE + weight * T^2 * KL(softmax(t/T) || softmax(s/T)) in NumPy float64 from float64 copies of the models."""
    s_model, t_model = copy.deepcopy(student).double().train(), copy.deepcopy(teacher).double().eval()
    with torch.no_grad():
        s = s_model(x.double()).numpy()
        t = t_model(x.double()).numpy()

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    ce = -log_softmax(s)[np.arange(len(y)), y.numpy()].mean()
    log_ps, log_pt = log_softmax(s / temperature), log_softmax(t / temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1).mean()
    return float(ce + weight * temperature**2 * kl)


def test_fast_path_step_equals_eager_step_within_bf16_tolerance():
    settings = BenchSettings(**TINY, precision="bf16", channels_last=True, device="cpu")
    specs = resolve_paths(settings, CPU)
    assert specs["fast"].precision == "bf16" and specs["fast"].channels_last and not specs["fast"].sync_every_step
    data = random_dataset(32, (3, 16, 16), 10, seed=0)
    rigs = {name: Rig(BenchCase("kd"), settings, spec, 8, CPU, data) for name, spec in specs.items()}
    eager, fast = rigs["eager"], rigs["fast"]
    for a, b in zip(eager.student.state_dict().values(), fast.student.state_dict().values()):
        assert torch.equal(a, b)  # the same weights on both paths
    conv_weights = [q for q in fast.student.parameters() if q.dim() == 4]
    assert all(q.is_contiguous(memory_format=torch.channels_last) for q in conv_weights)
    before = torch.cat([q.detach().flatten().clone() for q in eager.student.parameters()])
    x, y = data[0][:8], data[1][:8]
    batch = eager.val.batch(torch.arange(8))
    golden = _golden_kd_loss(eager.student, eager.teacher, batch.x, y)
    loss_eager = eager.first_step(x, y, settings)
    loss_fast = fast.first_step(x, y, settings)
    assert loss_eager == pytest.approx(golden, rel=1e-5)
    assert loss_fast == pytest.approx(golden, rel=2e-2)  # bf16 keeps 8 mantissa bits
    # the update of that step (same lr, same optimiser maths) points the same way and has the same size
    deltas = [torch.cat([q.detach().flatten() for q in rig.student.parameters()]) - before for rig in (eager, fast)]
    cosine = torch.nn.functional.cosine_similarity(deltas[0], deltas[1], dim=0)
    assert cosine > 0.98 and deltas[1].norm() / deltas[0].norm() == pytest.approx(1.0, abs=0.05)


def test_prefer_fused_is_the_same_sgd_update():
    torch.manual_seed(0)
    p0 = torch.randn(5, 3)
    grad = torch.randn(5, 3)
    lr, momentum, wd = 0.1, 0.9, 5e-4
    results = []
    for fused in (False, True):
        p = torch.nn.Parameter(p0.clone())
        opt = torch.optim.SGD([p], lr=lr, momentum=momentum, weight_decay=wd, foreach=True)
        opt = prefer_fused(opt, CPU, force=fused)
        assert opt.param_groups[0].get("fused") is (True if fused else None)
        for _ in range(2):
            p.grad = grad.clone()
            opt.step()
        results.append(p.detach().numpy().astype(np.float64))
    # by hand: b1 = g + wd p0; p1 = p0 - lr b1; b2 = m b1 + g + wd p1; p2 = p1 - lr b2
    g, q0 = grad.numpy().astype(np.float64), p0.numpy().astype(np.float64)
    b1 = g + wd * q0
    q1 = q0 - lr * b1
    b2 = momentum * b1 + g + wd * q1
    q2 = q1 - lr * b2
    for r in results:
        np.testing.assert_allclose(r, q2, rtol=1e-6, atol=1e-7)
    opt = torch.optim.SGD([torch.nn.Parameter(p0.clone())], lr=lr, foreach=True)
    assert prefer_fused(opt, CPU) is opt  # on CPU fused gains nothing (measured): unchanged unless forced


def test_compile_mode_and_inductor_cache(tmp_path, monkeypatch):
    assert resolve_compile_mode("auto", torch.device("cuda"), static_shapes=True) == "reduce-overhead"
    assert resolve_compile_mode("auto", torch.device("cuda"), static_shapes=False) == "default"
    assert resolve_compile_mode("auto", CPU, static_shapes=True) == "default"
    assert resolve_compile_mode("max-autotune", CPU, static_shapes=True) == "max-autotune"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "users"))
    assert set_inductor_cache(tmp_path / "run1") == tmp_path / "users"  # the user's choice wins
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert set_inductor_cache(tmp_path / "run1") == tmp_path / "run1"
    assert set_inductor_cache(tmp_path / "run2") == tmp_path / "run2"  # a later run in the process: its own
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "run2") and (tmp_path / "run2").is_dir()


def test_train_config_fast_path_defaults():
    cfg = validate({"data": {"name": "fashion_mnist"}, "student": {"name": "resnet8"}})
    assert cfg.train.precision == "auto" and cfg.train.channels_last == "auto"
    assert cfg.train.compile is False and cfg.train.compile_mode == "auto"


def test_compiled_forward_features_matches_eager_and_survives_deepcopy():
    """Graph capture of forward_features (dynamo, backend "eager": no code generation, seconds)."""
    from adakd.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1, image_size=16, widths=[4, 4, 8])
    reference = copy.deepcopy(model)
    compile_forward_features(model, backend="eager")
    x = torch.randn(4, 1, 16, 16)
    got, want = model.forward_features(x), reference.forward_features(x)
    torch.testing.assert_close(got.logits, want.logits)
    assert len(got.stages) == len(want.stages) and len(got.preact_stages) == len(want.preact_stages)
    got.logits.square().sum().backward()
    want.logits.square().sum().backward()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    clone = copy.deepcopy(model)  # the compiled method is rebound to the copy, not to the original
    with torch.no_grad():
        for p in clone.parameters():
            p.zero_()
    assert torch.count_nonzero(clone.forward_features(x).logits) == 0
    assert model.state_dict().keys() == reference.state_dict().keys()


@pytest.mark.slow
def test_inductor_compile_of_a_one_layer_model(tmp_path):
    """The opt-in path with inductor code generation, once, on a 1-layer model (tens of seconds of C++
    compilation on this CPU; skipped when over 45 s on a loaded machine)."""
    script = textwrap.dedent("""
        import torch
        from torch import nn
        from adakd.engine.fast import compile_models
        from adakd.models.contract import ContractModel

        class One(ContractModel):
            input_shape = (1, 6, 6)
            def __init__(self):
                super().__init__()
                self.units = nn.ModuleList([nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())])
                self.stage_ends = [0]
                self.fc = nn.Linear(4, 3)

        torch.manual_seed(0)
        model, x = One(), torch.randn(4, 1, 6, 6)
        want = model.forward_features(x).logits.detach()
        mode = compile_models([model, None], torch.device("cpu"), "auto", cache_dir=%r)
        got = model.forward_features(x)
        got.logits.sum().backward()
        assert mode == "default" and model.units[0][0].weight.grad is not None
        print(float((got.logits.detach() - want).abs().max()))
    """ % str(tmp_path / "inductor"))
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=45,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.skip("inductor compile of a 1-layer model took over 45 s on this machine")
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5


def test_a_capped_instruction_set_is_recorded_and_keys_the_probe(monkeypatch):
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA make this CPU time like another: the bench says so and the
    fast-path probe's cache key (the device model) tells the two apart."""
    from adakd.tools.bench import environment
    from adakd.tools.bench.output import _cpu_text
    from adakd.runtime.device import device_model

    cpu = torch.device("cpu")
    for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(key, raising=False)
    plain_model, plain_env = device_model(cpu), environment(cpu)
    assert plain_env["isa_limits"] == {} and "capped" not in _cpu_text(plain_env)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped_env = environment(cpu)
    assert capped_env["isa_limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert "instruction set capped: ONEDNN_MAX_CPU_ISA=AVX2" in _cpu_text(capped_env)
    assert device_model(cpu) != plain_model
