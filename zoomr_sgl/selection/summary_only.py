"""``summary_only``: drop each detail when its thought closes and never zoom (MEMENTO/InftyThink-like): a step
attends the prompt, the summaries and the open thought."""

from zoomr_sgl.selection.base import THOUGHT, DetailAction, Policy


class SummaryOnlyPolicy(Policy):
    name = "summary_only"
    detail_action = DetailAction.DROP

    def host_units(self, config):  # a closed prompt thought's detail is not attended anyway
        return frozenset({THOUGHT})
