"""``streaming``: attention sink plus recent window (StreamingLLM). Attends the first ``sink_tokens`` and the last
``recent_tokens`` positions, whatever the thoughts. The table is thought-granular and the window token-granular, so
the table keeps every detail where it is; what falls out of the window is ``forgotten``, which the server frees
(positions the radix tree owns, the prompt included, stay: served, the window slides over the output only)."""

import torch

from zoomr_sgl.selection.base import DetailAction, Policy


class StreamingPolicy(Policy):
    name = "streaming"
    detail_action = DetailAction.KEEP
    windowed = True

    def forgotten(self, length: int, config) -> tuple[int, int]:
        sink = min(config.sink_tokens, length)
        return sink, max(sink, length - config.recent_tokens)

    def positions(self, table, inputs, recall, evict) -> torch.Tensor:
        n, cfg = table.length, table.config
        sink = min(cfg.sink_tokens, n)
        return torch.cat([torch.arange(sink), torch.arange(max(sink, n - cfg.recent_tokens), n)]).to(torch.int64)
