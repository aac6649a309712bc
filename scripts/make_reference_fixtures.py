"""Write tests/fixtures/reference_models.json: what the reference code's models compute (issue 25, item 3).

    git -C MIRROR archive HEAD | tar -x -C /tmp/ref/mdistiller        # a copy of megvii-research/mdistiller
    python scripts/make_reference_fixtures.py --reference /tmp/ref/mdistiller [--repdistiller /tmp/ref/RepDistiller]

For every architecture of the CIFAR-100 tables (and mdistiller's CIFAR / Tiny-ImageNet models the zoo added),
the script builds the REFERENCE model (mdistiller's ``mdistiller/models/cifar`` package, loaded from the
given checkout; nothing of it is copied here), fills its state dict with ``tests/reference_fill.py``'s
deterministic fill (a function of each key's name and shape), runs the fixed probe input in eval mode and
records, per architecture: the state dict's key names and shapes (the tests rebuild the reference-layout
file from them), the logits in full, and for every feature point the distillers read (mdistiller's
``feats["feats"]``, ``feats["preact_feats"]``, ``feats["pooled_feat"]``) its shape, 256 fixed entries, sum
and L2 norm. With ``--repdistiller`` it also checks that RepDistiller's model of the same name has the same
keys and shapes (CRD's released teachers use those names) and records it.

Only the reference's model modules are imported; tests/test_reference_weights.py reads the result without them.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from reference_fill import filled_state_dict, probe_input, summarize  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "reference_models.json"

#: fixture id -> (our model name, mdistiller dict ("cifar" | "tiny_imagenet"), its key, RepDistiller's
#: builder or None, num_classes, image size)
ARCHITECTURES: dict[str, tuple[str, str, str, str | None, int, int]] = {
    **{name: (name, "cifar", name, name, 100, 32) for name in
       ("resnet8", "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4", "ResNet50",
        "wrn_16_2", "wrn_40_1", "wrn_40_2")},
    "vgg8": ("vgg8", "cifar", "vgg8", "vgg8_bn", 100, 32),
    "vgg13": ("vgg13", "cifar", "vgg13", "vgg13_bn", 100, 32),
    "MobileNetV2": ("MobileNetV2", "cifar", "MobileNetV2", "mobile_half", 100, 32),
    "ShuffleV1": ("ShuffleV1", "cifar", "ShuffleV1", "ShuffleV1", 100, 32),
    "ShuffleV2": ("ShuffleV2", "cifar", "ShuffleV2", "ShuffleV2", 100, 32),
    "ResNet18": ("ResNet18", "cifar", "ResNet18", None, 100, 32),
    "tiny_imagenet/ResNet18": ("ResNet18", "tiny_imagenet", "ResNet18", None, 200, 64),
    "tiny_imagenet/MobileNetV2": ("mobilenetv2_tinyimagenet", "tiny_imagenet", "MobileNetV2", None, 200, 64),
    "imagenet/MobileNetV1": ("MobileNetV1", "imagenet", "MobileNetV1", None, 1000, 224),
}
# Not here: tiny_imagenet_model_dict["ShuffleV2"] -- the reference's forward pools with a fixed 4x4 window,
# which at 64x64 leaves 2x2 x 1024 features for a Linear(1024, C): it does not run (a reference bug).


def load_package(name: str, folder: Path) -> ModuleType:
    """Import the package in ``folder`` under ``name`` (its own relative imports only; no parent package)."""
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise SystemExit(f"no Python package in {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def commit_of(path: Path) -> str:
    head = path / ".git"
    return head.read_text().strip() if head.is_file() else "unknown (an archive: pass the commit in the message)"


@torch.no_grad()
def record(model: torch.nn.Module, image_size: int) -> dict:
    model.eval()
    with contextlib.redirect_stdout(io.StringIO()):  # mobile_half prints its settings
        logits, feats = model(probe_input(image_size))
    out = {"logits": logits.double().tolist(),
           "feats": [summarize(f) for f in feats["feats"]],
           "pooled_feat": summarize(feats["pooled_feat"])}
    if "preact_feats" in feats:
        out["preact_feats"] = [summarize(f) for f in feats["preact_feats"]]
    return out


def rounded(obj):
    """Floats to 9 significant digits (every fp32 value round-trips), to keep the file small."""
    if isinstance(obj, float):
        return float(f"{obj:.9g}")
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    return obj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of megvii-research/mdistiller")
    parser.add_argument("--repdistiller", type=Path, help="a checkout of HobbitLong/RepDistiller (key check)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cifar = load_package("reference_mdistiller_cifar", args.reference / "mdistiller" / "models" / "cifar")
    rep = load_package("reference_repdistiller_models", args.repdistiller / "models") if args.repdistiller else None
    # the ImageNet package's __init__ needs torchvision-era helpers: load the one model file directly
    spec = importlib.util.spec_from_file_location(
        "reference_mdistiller_mobilenetv1", args.reference / "mdistiller" / "models" / "imagenet" / "mobilenetv1.py")
    mobilenetv1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mobilenetv1)
    imagenet = {"MobileNetV1": (lambda num_classes: mobilenetv1.MobileNetV1(num_classes=num_classes), None)}
    dicts = {"cifar": cifar.cifar_model_dict, "tiny_imagenet": cifar.tiny_imagenet_model_dict, "imagenet": imagenet}
    fixtures: dict = {}
    for fid, (ours, which, key, rep_name, num_classes, image_size) in ARCHITECTURES.items():
        builder = dicts[which][key][0]
        with contextlib.redirect_stdout(io.StringIO()):
            model = builder(num_classes=num_classes)
        keys = [(k, list(v.shape)) for k, v in model.state_dict().items()]
        model.load_state_dict(filled_state_dict(keys))
        entry = {"model": ours, "num_classes": num_classes, "image_size": image_size,
                 "reference": f"mdistiller {which}: {key}",
                 "keys": keys, **record(model, image_size)}
        if rep is not None and rep_name is not None:
            with contextlib.redirect_stdout(io.StringIO()):
                theirs = getattr(rep, rep_name)(num_classes=num_classes).state_dict()
            if [(k, list(v.shape)) for k, v in theirs.items()] != keys:
                raise SystemExit(f"{fid}: RepDistiller's {rep_name} has other keys than mdistiller's")
            entry["same_keys_as"] = f"RepDistiller models.{rep_name}"
        fixtures[fid] = entry
        print(f"{fid:28s} {len(keys):4d} keys  logits |max| {max(abs(v) for r in entry['logits'] for v in r):.3g}")
    payload = {"source": {"mdistiller": commit_of(args.reference),
                          "repdistiller": commit_of(args.repdistiller) if args.repdistiller else None,
                          "torch": torch.__version__,
                          "fill": "tests/reference_fill.py", "script": "scripts/make_reference_fixtures.py"},
               "architectures": fixtures}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(rounded(payload), separators=(",", ":"))
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(text) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
