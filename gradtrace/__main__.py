"""``python -m gradtrace ...``: the ``gradtrace`` command (what torchrun and srun launch)."""

from .cli import app

app(prog_name="gradtrace")
