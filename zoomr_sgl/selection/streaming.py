"""``streaming``: attention sink plus recent window (StreamingLLM). Attends the first ``sink_tokens`` and the last
``recent_tokens`` positions, whatever the thoughts; details stay on the device (the window is token-granular, the
table thought-granular, so nothing is freed)."""

import torch

from zoomr_sgl.selection.base import DetailAction, Policy


class StreamingPolicy(Policy):
    name = "streaming"
    detail_action = DetailAction.KEEP

    def positions(self, table, inputs, recall, evict) -> torch.Tensor:
        n, cfg = table.length, table.config
        sink = min(cfg.sink_tokens, n)
        return torch.cat([torch.arange(sink), torch.arange(max(sink, n - cfg.recent_tokens), n)]).to(torch.int64)
