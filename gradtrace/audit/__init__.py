"""The audit: what did a fine-tune change, which training examples taught it,
and does removing them undo it? See :func:`run_audit` and ``docs/audit.md``."""

from .behaviours import BehaviourGroup, BehaviourGrouper, as_behaviour_groups, group_flagged, one_behaviour_per_cluster
from .config import AuditConfig
from .run import AuditResult, run_audit

__all__ = ["AuditConfig", "AuditResult", "BehaviourGroup", "BehaviourGrouper", "as_behaviour_groups", "group_flagged", "one_behaviour_per_cluster",
           "run_audit"]
