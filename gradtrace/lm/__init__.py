"""The language-model layer: every part of gradtrace that loads, samples,
scores, fine-tunes or embeds with a language model uses these modules.

* :mod:`~gradtrace.lm.load`: :func:`load_model` by name (``smollm2``,
  ``tiny``, a local Hugging Face folder, ``NAME+lora:DIR``);
* :mod:`~gradtrace.lm.sample`: the seeded top-p sampler and :class:`SamplingConfig`;
* :mod:`~gradtrace.lm.tasks`: per-example NLL tasks (:class:`CausalLMTask`,
  :class:`TextNLLTask`);
* :mod:`~gradtrace.lm.lora`: add, train, load and merge LoRA adapters;
* :mod:`~gradtrace.lm.embed`: text embedders (MiniLM, hashing, cached).

Import the submodules; this package imports nothing heavy itself.
"""
