"""Raw answers of few-shot SmolLM2 probe generation: 2 attempts per subtask, counts and every answer printed.

Used to find why generation gave no item before the change to
``gradtrace.probes.generate`` (run with PYTHONPATH pointing at an export of
the older code, e.g. ``git archive afd48e4 gradtrace | tar -x -C /tmp/old``):

    PYTHONPATH=/tmp/old python benchmarks/reflect_probes_lm_diag.py 120   # before (max_new_tokens 120, as the benchmark ran it)
    PYTHONPATH=. python benchmarks/reflect_probes_lm_diag.py 128          # now

The reading is in BENCHMARKS.md, section reflect_probes.
"""

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gradtrace.lm.load import load_model  # noqa: E402
from gradtrace.probes import seed_items  # noqa: E402
from gradtrace.probes.generate import generate_lm_items, local_completer  # noqa: E402


def main() -> None:
    max_new = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    m, t = load_model("smollm2")
    raw: list[str] = []

    def wrap(complete):
        def c(prompts, seed):
            out = complete(prompts, seed)
            raw.extend(out)
            return out
        return c

    t0, c0 = time.perf_counter(), time.process_time()
    items, counts = generate_lm_items(wrap(local_completer(m, t, max_new_tokens=max_new)), seed_items(), 2, generator="smollm2", seed=0)
    print(json.dumps(counts), f"wall {time.perf_counter() - t0:.1f} s, cpu {time.process_time() - c0:.1f} s")
    for r in raw:
        print("-----")
        print(r)
    print("answer tokens:", [len(t(r)["input_ids"]) for r in raw])


if __name__ == "__main__":
    main()
