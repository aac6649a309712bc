"""Hyperparameter search over configs with Optuna (``adakd tune``): search file (space.py), a trial as an
ordinary run scored on the validation split (objective.py), the study on a shared database (study.py),
and its report (report.py)."""
