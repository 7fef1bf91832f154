"""``full``: attend everything, keep every detail on the device (the stock-SGLang reference point)."""

from zoomr_sgl.selection.base import DetailAction, Policy


class FullPolicy(Policy):
    name = "full"
    detail_action = DetailAction.KEEP
