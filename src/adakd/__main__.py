"""``python -m adakd`` (and ``torchrun -m adakd``) = the ``adakd`` command."""
from .cli import entry

entry()
