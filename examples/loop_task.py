"""A --task file over a finished (or stopped) loop run, for gradtrace featurize.

    GRADTRACE_LOOP_RUN=loop_run gradtrace featurize --task examples/loop_task.py:make_task --out loop_store --projection dense --dim 256
    gradtrace self-influence loop_store --top 10

GRADTRACE_LOOP_RUN names the run folder (default: loop_run); GRADTRACE_LOOP_MAX
keeps the first N training texts of each round (default: 100; 0 = all).
"""

import os

from gradtrace.loop.trace import loop_task_spec


def make_task():
    limit = int(os.environ.get("GRADTRACE_LOOP_MAX", "100"))
    return loop_task_spec(os.environ.get("GRADTRACE_LOOP_RUN", "loop_run"), max_per_round=limit or None)
