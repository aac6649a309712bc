"""Typed, validated run configuration.

A run is described by one YAML file (optionally ``base:``-inheriting another)
plus dotted ``key=value`` overrides from the command line:

    adakd train configs/fashion_mnist/kd.yaml seed=3 train.epochs=2 data.batch_size=256

Every mistake (bad YAML, unknown key, wrong type, impossible value) becomes a
single :class:`~adakd.errors.ConfigError` whose message names the key and the fix.
"""
from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .plugins import load_plugins


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(BaseModel):
    """Dataset choice, split, subset and augmentation settings.

    ``train_subset`` is a count (int >= 1) or a fraction (float in (0, 1]) of the training
    split, taken class-balanced and deterministically from ``seed``. ``val_fraction`` holds out
    a stratified part of the *training* split as validation data; the test split is never touched.
    ``crop_padding`` / ``flip`` of ``None`` take the dataset's defaults (see ``DatasetInfo``).
    ``options`` are passed to the dataset reader (e.g. ``verify_checksum``, ``grayscale``).

    ``pipeline``: ``device`` (decoded once, held on the training device), ``stream`` (decoded each
    epoch by ``num_workers`` worker processes, None = min(8, CPU count)) or ``auto`` (device when
    the decoded splits fit ``memory_budget``; see :mod:`adakd.data.pipeline`). ``global_batch_size``: the
    batch of one step over all the processes of a torchrun job; each process takes ``global_batch_size / W``
    (:meth:`per_process_batch`) and ``batch_size`` is not read. ``recipe``: the
    augmentation, ``pad_crop_flip`` or ``imagenet`` (None = the dataset's). ``bad_images``: a file
    that does not decode stops the run naming it (``error``) or is left out and counted (``skip``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str
    root: str | None = None
    download: bool = False
    #: The batch of one process (the global batch of W processes is W x batch_size).
    batch_size: int = Field(128, gt=0)
    #: The batch of one step over all processes; when set, each process takes global_batch_size / W and
    #: batch_size is not read: a job resumed with another number of processes keeps its batch, its lr
    #: (never rescaled) and its sample order.
    global_batch_size: int | None = Field(None, gt=0)
    eval_batch_size: int = Field(512, gt=0)
    val_fraction: float = Field(0.0, ge=0.0, le=0.5)
    train_subset: int | float | None = None
    #: A class-balanced part of the test split (count or fraction): for quick checks and tests only.
    test_subset: int | float | None = None
    augment: bool = True
    crop_padding: int | None = Field(None, ge=0)
    flip: bool | None = None
    image_size: int | None = Field(None, gt=0)
    seed: int = 0
    drop_last: bool = True
    options: dict[str, Any] = Field(default_factory=dict)
    pipeline: Literal["auto", "device", "stream"] = "auto"
    memory_budget: float | str | None = None
    num_workers: int | None = Field(None, ge=0)
    prefetch_factor: int = Field(2, ge=1)
    recipe: Literal["pad_crop_flip", "imagenet"] | None = None
    bad_images: Literal["error", "skip"] = "error"

    @field_validator("train_subset", "test_subset", mode="before")
    @classmethod
    def _check_subset(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool):
            raise ValueError("train_subset must be a count (e.g. 6000) or a fraction (e.g. 0.1), not a bool")
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"train_subset={value}: a count must be >= 1 (or give a fraction in (0, 1])")
            return value
        if isinstance(value, float):
            if value.is_integer() and value > 1:
                return int(value)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"train_subset={value}: a fraction must be in (0, 1] (or give a count >= 1)")
            return value
        raise ValueError("train_subset must be a count (int) or a fraction (float in (0, 1])")

    def per_process_batch(self, world_size: int) -> int:
        """The batch of one process of ``world_size``: ``global_batch_size / world_size`` when the global
        batch is set (a ConfigError naming the fix when it does not divide), else ``batch_size``."""
        if self.global_batch_size is None:
            return self.batch_size
        if self.global_batch_size % world_size:
            lower = self.global_batch_size - self.global_batch_size % world_size
            raise ConfigError(
                f"data.global_batch_size={self.global_batch_size} does not divide over {world_size} processes: "
                f"choose a multiple of {world_size} (e.g. {lower or world_size} or {lower + world_size}), or run "
                "with a number of processes that divides it.")
        return self.global_batch_size // world_size


class ModelConfig(_Strict):
    """A zoo model by registry name, with builder keyword arguments (e.g. ``widths``)."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


#: ``teacher.checkpoint: published``: the architecture's released file (engine/published_teachers.py).
PUBLISHED_TEACHER = "published"


class TeacherConfig(ModelConfig):
    """The frozen teacher: load ``checkpoint``, or train ``recipe`` (a config file) once and cache it.

    ``checkpoint: published`` takes the released teacher of the table (``adakd teachers fetch``); with a
    ``recipe`` beside it, the recipe trains the teacher when that file is absent (one line says so).
    """

    #: An adakd checkpoint / run dir, or a foreign weight file (RepDistiller/mdistiller ``ckpt_epoch_240.pth``,
    #: a state_dict, torchvision weights for ``tv:`` models): its layout is detected (models/foreign.py); or
    #: ``published``: the table's released teacher of this architecture and dataset (under $ADAKD_TEACHERS).
    checkpoint: str | None = None
    #: The layout of ``checkpoint``: auto (detected), or forced: adakd, reference (= repdistiller, mdistiller:
    #: the CRD code's names), torchvision.
    format: Literal["auto", "adakd", "reference", "repdistiller", "mdistiller", "torchvision"] = "auto"
    #: A training config for the teacher (trained once, cached); beside ``checkpoint: published``, the fallback.
    recipe: str | None = None
    #: The teacher-output cache (adakd/engine/teacher_cache.py): "off", "auto" (under
    #: $ADAKD_CACHE/teacher_outputs/<key>/, built on first use) or the PATH of a built cache.
    cache: str = "off"
    #: K, the augmented views of each training sample cached (None: train.epochs, one per epoch: exact).
    cache_views: int | None = Field(None, ge=1)
    #: Seed of the cached views' augmentation (a run with seed == cache_seed and K = epochs is the live run).
    cache_seed: int = 0
    #: Storage of the cached outputs; "fp32" is exact, "fp16" half the size.
    cache_dtype: Literal["fp16", "fp32"] = "fp16"
    #: Keep only the top-k logits per sample (+ the rest's probability mass); None: all logits.
    cache_topk: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherConfig":
        if self.checkpoint and self.recipe and self.checkpoint != PUBLISHED_TEACHER:
            raise ValueError("give either teacher.checkpoint or teacher.recipe, not both (only "
                             f"`checkpoint: {PUBLISHED_TEACHER}` takes a recipe: the fallback when the published "
                             "file is absent)")
        if not self.checkpoint and not self.recipe:
            raise ValueError(
                "the teacher needs weights: set teacher.checkpoint=PATH (a checkpoint or run dir), "
                f"teacher.checkpoint={PUBLISHED_TEACHER} (the released teacher: `adakd teachers fetch`) "
                "or teacher.recipe=CONFIG.yaml (trained first, then cached)"
            )
        return self


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    #: Multiply lr by (global batch / lr_reference_batch) when set (linear scaling rule for DDP).
    lr_reference_batch: int | None = Field(None, gt=0)

    @field_validator("lr")
    @classmethod
    def _lr_fits_float32(cls, value: float) -> float:
        if value > 3.4e38:  # a step computes in float32: such an lr cannot be applied at all
            raise ValueError("the lr is beyond float32's range (max 3.4e38); typical values are 0.01-0.1")
        return value


class ScheduleConfig(_Strict):
    """Learning-rate schedule, evaluated per step; epochs may be fractional."""

    name: Literal["multistep", "cosine", "onecycle", "constant"] = "multistep"
    milestones: list[float] = Field(default_factory=lambda: [150, 180, 210])
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainConfig(_Strict):
    epochs: int = Field(240, gt=0, strict=True)  # strict: `epochs: true` is not 1 epoch
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    #: "bf16" = bfloat16 autocast; "fp16" = float16 autocast with a gradient scaler (torch.amp.GradScaler:
    #: its skipped steps count as skipped_steps; not for SAKD/ABL); "auto" = the fastest of fp32/bf16 (and fp16 on
    #: CUDA) x NCHW/channels_last, timed on the run's own models first (engine/probe.py; cached per machine and
    #: setup; $ADAKD_PRECISION skips the timing).
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "auto"
    #: channels_last memory format for models and batches; "auto" = timed with the precision (see above).
    channels_last: bool | Literal["auto"] = "auto"
    #: torch.compile the student's and teacher's forward_features (opt-in: compiling takes minutes on a CPU).
    compile: bool = False
    #: torch.compile mode; "auto" = "reduce-overhead" (CUDA graphs) on CUDA with data.drop_last, else "default".
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "auto"
    #: Deterministic algorithms (bitwise-reproducible on CPU); from 3 processes on, DDP all-reduces each gradient
    #: on its own so that a resumed job sums exactly as the uninterrupted one (runtime/distributed.py).
    deterministic: bool = True
    #: Test accuracy every k epochs and after each phase's last epoch; best.pt / best_top1 are the best of the
    #: evaluated epochs, and the other epochs' metrics.jsonl lines have no test_* fields (1: every epoch).
    eval_every: int = Field(1, gt=0, strict=True)
    #: Cap on steps per epoch (quick experiments and tests); None = the whole split.
    max_steps_per_epoch: int | None = Field(None, gt=0)
    #: Also write a resumable checkpoint every N steps inside an epoch (None: at epoch ends only).
    checkpoint_every_steps: int | None = Field(None, gt=0)
    #: On a NaN/inf loss: stop ("error") or skip the step ("skip").
    on_nonfinite: Literal["error", "skip"] = "error"
    #: Multi-process (torchrun) runs: BatchNorm statistics over the global batch instead of each rank's shard.
    sync_batchnorm: bool = False
    #: Also write every epoch's metrics as TensorBoard scalars to RUN_DIR/tensorboard (the tensorboard extra).
    tensorboard: bool = False
    #: Experiment trackers that also receive every epoch's record, the resolved config and the summary
    #: (rank 0 only; each an optional extra: ``mlflow``, ``wandb``). See :mod:`adakd.engine.trackers`.
    trackers: list[Literal["mlflow", "wandb"]] = Field(default_factory=list)
    #: Also upload ``checkpoints/student.pt`` to the trackers at the end of the run (opt-in: a file per run).
    tracker_artifacts: bool = False


class StrategyConfig(_Strict):
    name: str = "standard"
    options: dict[str, Any] = Field(default_factory=dict)


class RunConfig(_Strict):
    """One training run: data x teacher x student x losses x strategy x schedule."""

    name: str = "run"
    #: Plugin modules to import first (dotted names or .py files, relative to the config): your own
    #: registered models, losses, strategies, datasets (adakd/plugins.py).
    imports: list[str] = Field(default_factory=list)
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs"
    #: Explicit run directory; default ``output_dir/name``.
    run_dir: str | None = None
    #: true: continue the run from its last checkpoint (strict: same config); "auto": continue when the run
    #: directory holds a checkpoint of this same config, else start (torchrun restarts imply "auto").
    resume: bool | Literal["auto"] = False
    data: DataConfig
    teacher: TeacherConfig | None = None
    student: ModelConfig
    #: Weight of the cross-entropy with the labels.
    ce_weight: float = Field(1.0, ge=0)
    #: Distillation losses by registry name -> options (``weight`` and the method's own keys).
    losses: dict[str, dict[str, Any]] = Field(default_factory=dict)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    #: Also train the same student without a teacher (same recipe) and show both in the summary.
    compare_scratch: bool = False
    progress: bool = True

    @field_validator("losses", mode="before")
    @classmethod
    def _losses_mapping(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, list):  # [kd, crd] or [{name: kd, weight: 0.9}]
            out: dict[str, Any] = {}
            for item in value:
                if isinstance(item, str):
                    out[item] = {}
                elif isinstance(item, dict) and "name" in item:
                    item = dict(item)
                    out[item.pop("name")] = item
                else:
                    raise ValueError("each entry of losses must be a name or a mapping with 'name'")
            return out
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _teacher_needed(self) -> "RunConfig":
        if self.losses and self.teacher is None:
            raise ValueError("distillation losses are set but no teacher: add a `teacher:` section or remove `losses`")
        return self

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(self.output_dir) / self.name

    def scratch(self, run_dir: Path) -> "RunConfig":
        """``compare_scratch``'s baseline: the same student and recipe without a teacher, in ``run_dir``."""
        return self.model_copy(update={
            "teacher": None, "losses": {}, "strategy": self.strategy.model_copy(update={"name": "standard", "options": {}}),
            "ce_weight": 1.0, "compare_scratch": False, "run_dir": str(run_dir), "name": f"{self.name}-scratch"})


# --------------------------------------------------------------------------- loading

def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Check the path (configs live in configs/).")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}. Fix the syntax there.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}.")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(path: str | os.PathLike[str], _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, resolving ``base:`` inheritance and making relative teacher paths absolute."""
    path = Path(path).expanduser().resolve()
    if path in _seen:
        raise ConfigError(f"{path}: `base:` inheritance forms a cycle; remove one of the links.")
    data = _read_yaml(path)
    teacher = data.get("teacher")
    if isinstance(teacher, dict):
        for key in ("recipe", "checkpoint"):
            value = teacher.get(key)
            if isinstance(value, str) and value != PUBLISHED_TEACHER and not os.path.isabs(os.path.expanduser(value)):
                candidate = (path.parent / value).resolve()
                if key == "recipe" or candidate.exists():
                    teacher[key] = str(candidate)
    imports = data.get("imports")
    if isinstance(imports, list):  # plugin files relative to the file that names them
        data["imports"] = [str((path.parent / i).resolve()) if isinstance(i, str) and i.endswith(".py")
                           and not os.path.isabs(os.path.expanduser(i)) else i for i in imports]
    base = data.pop("base", None)
    if base is None:
        return data
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    for b in bases:
        merged = deep_merge(merged, load_raw(path.parent / b, _seen + (path,)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as a YAML scalar/list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=3).")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; write e.g. data.batch_size=128.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the dotted keys of a config file and its overrides."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                if k in node and node[k] is not None:
                    raise ConfigError(f"override {text!r}: {k!r} is not a section, it holds {node[k]!r}.")
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return data


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at ``loc`` (for "did you mean" suggestions)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        current = candidates[0] if candidates else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _known_fields(RunConfig, loc), n=1)
            hint = f" Did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))!r}?" if close else ""
            lines.append(f"unknown key {key!r}.{hint}")
        elif err["type"] == "missing":
            lines.append(f"missing required key {key!r}.")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{key}: {err['msg']}{shown}.")
    return f"{source}: invalid config:\n  " + "\n  ".join(lines)


def validate(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """Load, merge ``base:`` files, apply dotted overrides, validate."""
    data = apply_overrides(load_raw(path), overrides or [])
    cfg = validate(data, str(path))
    load_plugins(cfg.imports, base_dir=Path(path).expanduser().resolve().parent)
    return cfg


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
