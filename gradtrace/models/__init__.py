"""Model adapters and the bundled offline models (:mod:`gradtrace.models.zoo`)."""
