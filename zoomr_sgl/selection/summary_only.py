"""``summary_only``: drop each detail when its thought closes and never zoom (MEMENTO/InftyThink-like): a step
attends the prompt, the summaries and the open thought."""

from zoomr_sgl.selection.base import DetailAction, Policy


class SummaryOnlyPolicy(Policy):
    name = "summary_only"
    detail_action = DetailAction.DROP
