"""Shared fixtures: the real Fashion-MNIST files of ../shared/data, a private teacher cache, tiny configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fashion_mnist_root() -> Path | None:
    """Where the Fashion-MNIST IDX files are: $ADAKD_DATA, then ../shared/data beside the repo."""
    candidates = []
    if os.environ.get("ADAKD_DATA"):
        candidates.append(Path(os.environ["ADAKD_DATA"]))
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if (c / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists() or (c / "train-images-idx3-ubyte.gz").exists():
            return c
    return None


@pytest.fixture(scope="session")
def fmnist_root() -> Path:
    root = fashion_mnist_root()
    if root is None:
        pytest.fail("Fashion-MNIST files not found: set ADAKD_DATA to the folder holding fashion-mnist/")
    return root


#: ``--precision`` values: what ``precision: auto`` resolves to in every test (``probe``: measured).
TEST_PRECISIONS = ("fp32", "bf16", "fp16", "probe")


def pytest_addoption(parser):
    parser.addoption(
        "--precision", choices=TEST_PRECISIONS, default=os.environ.get("ADAKD_TEST_PRECISION", "fp32"),
        help="what `precision: auto` resolves to in the tests (sets ADAKD_PRECISION): fp32 (default, the same "
             "numerics on every CPU), bf16 (bf16 autocast everywhere, AMX or not), fp16 (fp16 autocast with its "
             "loss scaler; SAKD and ABL, which refuse fp16, run fp32), probe (the fast-path probe decides, as for "
             "a user). Also from $ADAKD_TEST_PRECISION. Tests that name a precision keep it.")
    parser.addoption(
        "--device", default=os.environ.get("ADAKD_TEST_DEVICE", "cpu"),
        help="the device of the tests that follow it (the `test_device` fixture, $ADAKD_TEST_DEVICE: "
             "test_gpu_readiness.py, test_losses_learn.py): cpu (default) or cuda (scripts/gpu_check.py). "
             "Also from $ADAKD_TEST_DEVICE. Tests that name a device keep it.")


def pytest_configure(config):
    """``--device`` also as $ADAKD_TEST_DEVICE, for modules that choose their device at import. Under
    pytest-xdist (``-n N``) each worker gets its share of the cores (torch threads and $OMP_NUM_THREADS, which
    the tests' subprocesses inherit), so N workers do not oversubscribe the machine."""
    os.environ["ADAKD_TEST_DEVICE"] = config.getoption("--device")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)


#: Markers of tests that run only when ``-m`` names them (CI's second stage, `.ci/run`), with why.
SECOND_STAGE = {
    "extended": "minutes of CPU (multi-process runs, every distiller again in fp16, the reference trajectories "
                "of the big pair): run with `python -m pytest -m extended`",
    "faults4": "4-process fault campaign: run with `python -m pytest -m faults4`",
}


def pytest_collection_modifyitems(config, items):
    """``extended`` and ``faults4`` tests run only when ``-m`` names them (CI's second stage); the default
    run (the suite of the README, under 10 minutes on 2 cores) skips them, saying how to run them."""
    selected = config.getoption("-m") or ""
    for marker, reason in SECOND_STAGE.items():
        if marker in selected:
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch, request):
    """Teacher cache and torch.compile cache inside the test's temp dirs, never the user's; ``precision:
    auto`` resolved as ``--precision`` says (inherited by the CLI subprocesses of the tests)."""
    cache = tmp_path_factory.getbasetemp() / "adakd-cache"
    monkeypatch.setenv("ADAKD_CACHE", str(cache))
    monkeypatch.delenv("ADAKD_TEACHERS", raising=False)  # published teachers: under the private cache too
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    precision = request.config.getoption("--precision")
    if precision == "probe":
        monkeypatch.delenv("ADAKD_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ADAKD_PRECISION", precision)
    monkeypatch.delenv("ADAKD_CHANNELS_LAST", raising=False)


@pytest.fixture(scope="session")
def test_device(request):
    """``--device`` as a torch.device; a device this machine lacks fails the session with the fix."""
    import torch

    device = torch.device(request.config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("--device cuda, but torch sees no CUDA device here: run on a GPU machine or drop --device.")
    return device


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small batches of small images run fastest on one thread (and do not spin on a busy machine).
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
