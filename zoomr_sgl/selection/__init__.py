"""Resident-set policies: one shared mechanism (``base``) and a small class per policy, registered by the names in
``config.POLICIES``. ``policy_for(name)`` returns the policy; ``select_batch`` selects for each request of a batch
from its own table and inputs only (the core's reference; the server decides through ``Policy.decide``)."""

from typing import Sequence

from zoomr_sgl.config import POLICIES
from zoomr_sgl.selection.base import DetailAction, Policy, Selection, StepInputs
from zoomr_sgl.selection.full import FullPolicy
from zoomr_sgl.selection.quest import QuestPolicy
from zoomr_sgl.selection.sentencekv import SentenceKVPolicy
from zoomr_sgl.selection.streaming import StreamingPolicy
from zoomr_sgl.selection.summary_only import SummaryOnlyPolicy
from zoomr_sgl.selection.zoomr import ZoomRPolicy
from zoomr_sgl.thought_table import ThoughtTable

POLICY_REGISTRY: dict[str, Policy] = {
    cls.name: cls()
    for cls in (ZoomRPolicy, FullPolicy, StreamingPolicy, SummaryOnlyPolicy, QuestPolicy, SentenceKVPolicy)
}
assert tuple(POLICY_REGISTRY) == POLICIES, "every configured policy has exactly one class"


def policy_for(name: str) -> Policy:
    try:
        return POLICY_REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown ZoomR policy {name!r}; expected one of {', '.join(POLICIES)}") from None


def select_batch(tables: Sequence[ThoughtTable], inputs: Sequence[StepInputs]) -> list[Selection]:
    """Each request's selection under its own configured policy."""
    return [policy_for(t.config.policy).select(t, x) for t, x in zip(tables, inputs, strict=True)]


__all__ = ["DetailAction", "Policy", "Selection", "StepInputs", "POLICY_REGISTRY", "policy_for", "select_batch"]
