"""Strategy options: one case rule for every options model (adakd.options.StrictOptions).

A choice among names (a ``Literal`` of strings) accepts any case and is stored in its declared
spelling; other strings (paths, names) are kept as written; an unknown choice is one ConfigError."""
from __future__ import annotations

from typing import Literal

import pytest

from adakd.errors import ConfigError
from adakd.options import StrictOptions, check_options
from adakd.strategies.abl import ABLStrategy
from adakd.strategies.sakd import SAKDStrategy


@pytest.mark.parametrize("strategy, given, expected", [
    (ABLStrategy, {"ablation": "FIXED", "hypergradient": "Darts", "meta_optimizer": "SGD", "val_loss": "CE+KD",
                   "student_error": "Global", "aux": "AUX1"},
     {"ablation": "fixed", "hypergradient": "darts", "meta_optimizer": "sgd", "val_loss": "ce+kd",
      "student_error": "global", "aux": "aux1"}),
    (SAKDStrategy, {"routing": "Random", "graft_bn": "BATCH"}, {"routing": "random", "graft_bn": "batch"}),
])
def test_choices_are_case_insensitive_in_both_adaptive_strategies(strategy, given, expected):
    options = strategy.check_options(given)
    assert {k: getattr(options, k) for k in expected} == expected


@pytest.mark.parametrize("strategy, key", [(ABLStrategy, "ablation"), (SAKDStrategy, "routing")])
def test_an_unknown_choice_is_one_config_error_naming_the_key(strategy, key):
    with pytest.raises(ConfigError, match=f"strategy.options.{key}: Input should be"):
        strategy.check_options({key: "sometimes"})


def test_other_strings_are_kept_as_written_and_the_declared_spelling_wins():
    class Options(StrictOptions):
        mode: Literal["NCHW", "channels_last"] | None = None
        path: str = ""

    options = check_options(Options, {"mode": "nchw", "path": "Runs/ABL"}, "x")
    assert (options.mode, options.path) == ("NCHW", "Runs/ABL")
    assert ABLStrategy.check_options({"gammas": "Runs/A/abl_gammas.json"}).gammas == "Runs/A/abl_gammas.json"
