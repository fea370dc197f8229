"""The explorer: ``gradtrace serve DIR...``, a local web app over gradtrace
artefacts (gradient stores, diffs, loop runs, audits, allocations, probe
results). See ``docs/explorer.md``.

Modules: :mod:`.artefacts` (the artefact base and the loader registry),
:mod:`.kinds` (one module per kind), :mod:`.app` (the Flask app, its
security checks and the server), :mod:`.cli` (the ``serve`` verb).
"""
