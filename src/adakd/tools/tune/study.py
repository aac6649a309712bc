"""``adakd tune CONFIG --space SPACE.yaml``: an Optuna study whose trials are ordinary runs.

    study folder (--out, default OUTPUT_DIR/tune-STUDY)
      tune.json       what the study is (config, overrides, space, storage without password): `adakd report` reads it
      study.db        the default storage, SQLite (nothing to start); --storage URL for a shared database
      trials/trial-0007/   one run directory per trial (resumable, reportable as any run)
      best.yaml       the best trial's config, trainable as it is: adakd train best.yaml

Every process started with the same storage and study name joins the same study (the database hands
out the trials). The study stops once it holds ``trials`` finished trials (complete or pruned);
workers running at that moment finish theirs, so a study of W workers can end with up to W - 1 more.
A tuner that is killed leaves its trial RUNNING with a heartbeat that stops; once the heartbeat is
older than ``heartbeat.grace`` the next worker (or the same command re-run) marks it failed and
retries its parameters in the same run directory (``resume=auto`` continues from its checkpoint). A
failed trial is never counted. The teacher is prepared once before the first trial: a recipe teacher
is trained (file-locked, so parallel workers wait for one), every trial then loads it; a base config
with ``teacher.cache: auto`` shares one teacher-output cache across trials (its key does not depend
on the loss options being searched).
"""
from __future__ import annotations

import json
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import yaml

from ...config import RunConfig, apply_overrides, load_config, load_raw, validate
from ...errors import ConfigError
from ...runtime.atomic import atomic_write_text
from .space import SearchSpace, load_space, override

STUDY_FILE = "tune.json"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("adakd tune needs Optuna: pip install -c constraints.txt 'adakd[tune]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, retries
    return optuna


def public_url(url: str) -> str:
    """The storage URL without its password (kept in tune.json; give passwords through PGPASSWORD/.pgpass)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: the storage will say so
        return url
    # URL is a NamedTuple; .set(password=None) keeps the password in SQLAlchemy 2.1
    return parsed._replace(password=None).render_as_string(hide_password=False) if parsed.password else url


def driver_url(url: str) -> str:
    """PostgreSQL through psycopg 3 (the tune extra), whatever SQLAlchemy's default driver for postgresql://."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_storage(url: str, space: SearchSpace) -> Any:
    """Optuna's RDB storage with heartbeats (killed trials become failed, then retried up to 3 times)."""
    optuna = _optuna()
    from optuna.storages import RDBStorage

    engine = {"connect_args": {"timeout": 300}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    given, url = url, driver_url(url)
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
        retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)}
    else:
        retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=3)}
    try:
        for attempt in range(5):  # workers started together race to create the tables: the losers try again
            try:
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=space.heartbeat_interval,
                                  grace_period=space.heartbeat_grace, **retry)
            except ModuleNotFoundError:
                raise
            except Exception:  # noqa: BLE001
                if attempt == 4:
                    raise
                time.sleep(0.5 + random.random() * 2 ** attempt)
        raise AssertionError("unreachable")
    except ModuleNotFoundError as exc:
        raise ConfigError(f"--storage {public_url(given)}: the database driver {exc.name} is missing "
                          "(PostgreSQL: pip install -c constraints.txt 'adakd[tune]' brings psycopg).") from None
    except Exception as exc:  # noqa: BLE001 - unreachable server, bad URL, refused login: one message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--storage {public_url(given)}: cannot open the study database ({first}). Check the URL "
                          "and that the server runs (sqlite:///PATH needs nothing).") from None


def _sampler(space: SearchSpace) -> Any:
    optuna = _optuna()
    # a worker's seed mixes the file's seed with its process id: workers of one study propose different values
    seed = None if space.seed is None else int(space.seed) * 1_000_003 + os.getpid()
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if space.sampler == "grid":  # every combination of the choices once, shared out over the workers
        return optuna.samplers.GridSampler({p.key: list(p.choices) for p in space.params}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(space: SearchSpace) -> Any:
    optuna = _optuna()
    if space.pruner == "median":  # stop a trial below the median of earlier trials at the same epoch
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if space.pruner == "asha":  # asynchronous successive halving (rungs at 1, 3, 9, ... epochs)
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def finished_trials(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


class _StopAt:
    """Stop this worker once the study holds ``n`` finished trials (all workers' together)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, study: Any, trial: Any) -> None:
        if len(finished_trials(study)) >= self.n:
            study.stop()


def check_space(config: str | Path, overrides: list[str], space: SearchSpace) -> RunConfig:
    """The base config, checked with every range's ends and every choice, before any trial runs."""
    cfg = load_config(config, overrides)
    if cfg.data.val_fraction <= 0:
        raise ConfigError("adakd tune scores trials on the validation split held out of the training set, and this "
                          "config has none: set data.val_fraction (e.g. data.val_fraction=0.1). The test split is "
                          "never used for choosing.")
    for param in space.params:
        for value in param.corners():
            try:
                load_config(config, overrides + [override(param.key, value)])
            except ConfigError as exc:
                raise ConfigError(f"{space.source}: space.{param.key} = {value!r} does not give a valid config: "
                                  f"{exc}") from None
    return cfg


def prepare_teacher(cfg: RunConfig, log: Callable[[str], None]) -> None:
    """Train (or find) the recipe teacher once for the whole study; trials then load the cached one."""
    if cfg.teacher is None or cfg.teacher.checkpoint:
        return
    from ...engine.teacher import teacher_checkpoint_path
    from ...engine.trainer import Trainer

    teacher_checkpoint_path(cfg.teacher, cfg, lambda recipe: Trainer(recipe, log, distributed=False).run(), log)


def trial_config(config: str | Path, overrides: list[str], values: dict[str, Any], study_dir: Path,
                 study: str, number: int) -> RunConfig:
    name = f"trial-{number:04d}"
    return load_config(config, overrides + [override(k, v) for k, v in values.items()] + [
        override("run_dir", str(study_dir / "trials" / name)), override("name", f"{study}-{name}"),
        "resume=auto", "progress=false"])


def write_best_config(study: Any, config: str | Path, overrides: list[str], space: SearchSpace,
                      study_dir: Path) -> Path | None:
    """``best.yaml``: the base config (``base:`` resolved) with the best trial's values, trainable as it is."""
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        return None
    data = apply_overrides(load_raw(config), overrides + [override(k, v) for k, v in best.params.items()])
    for key in ("run_dir", "resume"):
        data.pop(key, None)
    data["name"] = f"{space.study}-best"
    validate(data, "best.yaml")
    header = (f"# adakd tune, study {space.study}: trial {best.number}, {space.metric} {best.value:.4f} on the "
              f"validation split\n# ({', '.join(override(k, v) for k, v in best.params.items())}).\n"
              "# Train it: adakd train best.yaml   (data.val_fraction > 0 keeps the split; set 0 to train on all)\n")
    return atomic_write_text(study_dir / "best.yaml", header + yaml.safe_dump(data, sort_keys=False))


def run_tune(config: str | Path, space_file: str | Path, overrides: list[str] | None = None,
             storage: str | None = None, out: str | Path | None = None, trials: int | None = None,
             study_name: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Join (or start) the study and run trials until it holds its number of finished trials."""
    optuna = _optuna()
    overrides = list(overrides or [])
    space = load_space(space_file)
    if trials is not None or study_name is not None:
        from dataclasses import replace

        space = replace(space, trials=trials or space.trials, study=study_name or space.study)
    base = check_space(config, overrides, space)
    study_dir = Path(out or Path(base.output_dir) / f"tune-{space.study}").expanduser().resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{study_dir / 'study.db'}"
    atomic_write_text(study_dir / STUDY_FILE, json.dumps({
        "study": space.study, "storage": public_url(url), "config": str(Path(config).resolve()),
        "overrides": overrides, "space": space.source, "metric": space.metric, "direction": space.direction,
        "trials": space.trials}, indent=2) + "\n")
    study = optuna.create_study(study_name=space.study, storage=open_storage(url, space), direction=space.direction,
                                sampler=_sampler(space), pruner=_pruner(space), load_if_exists=True)
    prepare_teacher(base, log)
    optuna.storages.fail_stale_trials(study)  # a killed tuner's trial: failed now, retried below

    def objective(trial: Any) -> float:
        from .objective import run_trial

        values = {p.key: p.suggest(trial) for p in space.params}
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        retried = frozen.system_attrs.get("failed_trial")  # a retry continues the failed trial's run directory
        number = trial.number if retried is None else int(retried)
        cfg = trial_config(config, overrides, values, study_dir, space.study, number)
        log(f"trial {trial.number}{f' (retry of {number})' if retried is not None else ''}: "
            + ", ".join(override(k, v) for k, v in values.items()))
        return run_trial(cfg, trial, space.metric, log)

    from ...engine.trainer import NonFiniteLoss

    remaining = space.trials - len(finished_trials(study))
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, callbacks=[_StopAt(space.trials)], catch=(NonFiniteLoss,),
                       gc_after_trial=True)
    best_file = write_best_config(study, config, overrides, space, study_dir)
    done = finished_trials(study)
    result: dict[str, Any] = {"study": space.study, "study_dir": str(study_dir), "storage": public_url(url),
                              "finished": len(done), "best_config": str(best_file) if best_file else None}
    if best_file is not None:
        best = study.best_trial
        result.update({"best_trial": best.number, "best_value": best.value, "best_params": best.params,
                       "metric": space.metric})
    return result
