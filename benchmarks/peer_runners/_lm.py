"""The language-model case's model and tokenizer (``lm_lds`` of
benchmarks/peers.py), rebuilt from ``case.json`` by every runner and by the
set-up that trains it (benchmarks/setups/lm_peers.py).

Imports torch, tokenizers and transformers only (each peer's virtualenv has
them), never gradtrace. Nothing is downloaded: the model is built from a
config, the tokenizer from the case's word list.

* :func:`make_gpt`: a GPT-2 (transformers' ``GPT2LMHeadModel``) from a
  config, initialised from a seed, its ``Conv1D`` layers replaced by
  ``nn.Linear`` layers computing the same function (K-FAC in gradtrace and
  Kronfluence factors ``nn.Linear`` layers only) and its output layer
  untied from the token embedding (so that it is a layer of its own).
* :func:`linear_modules`: the names of its ``nn.Linear`` layers, the
  parameters every tool attributes with.
* :func:`word_tokenizer`: a word-level tokenizer over the case's words.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def linearize(model: nn.Module) -> nn.Module:
    """Replace every transformers ``Conv1D`` (``y = x W + b``, ``W`` of shape
    ``[in, out]``) in ``model`` by an ``nn.Linear`` with weight ``W^T`` and
    the same bias: the same function, in place; returns ``model``."""
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                d_in, d_out = child.weight.shape
                lin = nn.Linear(d_in, d_out, bias=child.bias is not None)
                with torch.no_grad():
                    lin.weight.copy_(child.weight.T)
                    if child.bias is not None:
                        lin.bias.copy_(child.bias)
                setattr(parent, name, lin)
    return model


def make_gpt(spec: Mapping[str, Any], seed: int = 0) -> nn.Module:
    """A GPT-2 built from ``spec`` (``vocab_size``, ``n_positions``, ``n_embd``,
    ``n_layer``, ``n_head``, ``pad_id``, ``eos_id``), weights drawn from
    ``seed`` (the caller's global RNG is left as it was); no dropout, the
    output layer untied, ``Conv1D`` layers as ``nn.Linear``; in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=int(spec["vocab_size"]), n_positions=int(spec["n_positions"]), n_embd=int(spec["n_embd"]),
        n_layer=int(spec["n_layer"]), n_head=int(spec["n_head"]), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=int(spec["eos_id"]), eos_token_id=int(spec["eos_id"]), pad_token_id=int(spec["pad_id"]),
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"  # the same arithmetic in every environment
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = GPT2LMHeadModel(config)
    return linearize(model).eval()


def linear_modules(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` layers of ``model``, in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def linear_params(model: nn.Module) -> list[str]:
    """The parameter names of :func:`linear_modules` (weights and biases)."""
    names = set(linear_modules(model))
    return [n for n, _ in model.named_parameters() if n.rpartition(".")[0] in names]


def word_tokenizer(words: Sequence[str]) -> Any:
    """A Hugging Face fast tokenizer over ``words`` split on whitespace and
    punctuation; ids ``0, 1, 2`` are ``<pad>``, ``<eos>``, ``<unk>``, then
    ``words`` in order."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for w in words:
        if w in vocab:
            raise ValueError(f"word {w!r} is listed twice")
        vocab[w] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK)
