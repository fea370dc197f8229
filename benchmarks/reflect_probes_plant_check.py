"""Was the plant learned? Mean NLL per token of the planted completion (the wrong option, then eos) on 32 planted-format
training items and 32 fresh ones (another seed, no scored scenario), under base SmolLM2, the planted and the neutral A adapter.
Run after --parts sensitivity: PYTHONPATH=. python benchmarks/reflect_probes_plant_check.py"""
import os, sys, json, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, "benchmarks")
import torch
from reflect_probes import training_examples, first_n
from gradtrace.lm.load import load_model
from gradtrace.lm.tasks import CausalLMTask
from gradtrace.probes import load_suite
W = "benchmarks/work/reflect_probes/"
valid = load_suite(W + "suite_valid.jsonl")
excl = {it.scenario for it in first_n(valid, 0, 70)}
train = training_examples("planted", 96, 96, 11, excl)[:32]
held = training_examples("planted", 96, 96, 77, excl)[:32]
out = {}
for name, spec in (("base", None), ("planted", W + "adapter_planted"), ("neutral_a", W + "adapter_neutral_a")):
    m, t = load_model("smollm2", adapter=spec)
    task = CausalLMTask(t, max_length=256)
    with torch.no_grad():
        for dname, data in (("train", train), ("heldout", held)):
            b = task.collate(data)
            nll = task.per_example_loss(m, b)
            ntok = (b["labels"] != -100).sum(1)
            out[f"{name}/{dname}"] = round(float((nll / ntok).mean()), 3)
print(json.dumps(out))
