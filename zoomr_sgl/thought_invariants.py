"""The thought table's invariants, checked from outside its moves (tests call it after every operation).

Contract: ``check_table(table)`` raises ``InvariantError`` (an ``AssertionError``) with a message on the first
inconsistency of a ``ThoughtTable``: thoughts tile the sequence (presets, pages, restarts), a freed table holds
nothing, the LRU stamps are the zoom buffer, the buffer stays within its budget, the off-device tally, the peak and
the device positions agree, nothing is attended that is not on the device, and every summary, the prompt and the
open thought are resident. It reads the table's private state and changes nothing.
"""

from __future__ import annotations

from zoomr_sgl.thought_table import ATTENDED, HOLDS_DEVICE, IN_BUFFER, InvariantError, Location


def check_table(table) -> None:
    def fail(msg: str) -> None:
        raise InvariantError(msg)

    thoughts = table.thoughts
    if len(table._loc) != len(thoughts):
        fail(f"{len(table._loc)} locations for {len(thoughts)} closed thoughts")
    prev_end, restart, preset = table.segmenter.start, table.segmenter.restart_at, table.segmenter.preset
    for i, t in enumerate(thoughts):
        if t.index != i or not t.closed:
            fail(f"thought {i} is {t}")
        if i < len(preset):
            if (t.detail_start, t.detail_end) != preset[i] or not t.detail_end == t.summary_start == t.summary_end:
                fail(f"preset thought {i} is {t}, not the span {preset[i]} with no summary")
            continue
        if ps := table.segmenter.page_size:
            if (t.detail_start, t.detail_end, t.summary_end) != (prev_end, prev_end + ps, prev_end + ps):
                fail(f"page {i} is {t}, not the {ps} tokens after {prev_end} with no summary")
            prev_end += ps
            continue
        if restart is not None and t.detail_start >= restart > prev_end:  # the gap the restart leaves
            prev_end = restart
        if not (t.detail_start == prev_end and t.detail_end == t.summary_start < t.summary_end <= table.length):
            fail(f"thought {i} spans {t} do not tile the sequence after {prev_end}")
        prev_end = t.summary_end
    if table.finished:
        if table._device_tokens() or any(loc is not Location.FREED for loc in table._loc) or table._last_used:
            fail("a freed request still holds something")
        return
    if Location.FREED in table._loc:
        fail("a live request has a freed thought")
    buffered = {t.index for t in thoughts if table._loc[t.index] in IN_BUFFER}
    if set(table._last_used) != buffered:
        fail(f"LRU stamps {sorted(table._last_used)} but zoom buffer holds {sorted(buffered)}")
    if not table._from_parked <= buffered:
        fail(f"thoughts {sorted(table._from_parked - buffered)} marked recalled from PARKED are not in the buffer")
    if (zoom := table.zoom_tokens()) > table.config.zoom_budget:
        fail(f"zoom buffer holds {zoom} tokens, over the budget of {table.config.zoom_budget}")
    off = sum(t.detail_len for t in thoughts if table._loc[t.index] not in HOLDS_DEVICE)
    if off != table._off_device:
        fail(f"off-device tally {table._off_device} != {off}")
    if not (0 <= table._device_tokens() <= table._peak):
        fail(f"device tokens {table._device_tokens()} outside [0, peak {table._peak}]")
    device = table._detail_mask(lambda i: table._loc[i] in HOLDS_DEVICE)
    attended = table._detail_mask(lambda i: table._loc[i] in ATTENDED)
    if int(device.sum()) != table._device_tokens():
        fail("device positions disagree with the device token count")
    if (attended & ~device).any():
        fail(f"positions attended but not on the device: {(attended & ~device).nonzero().flatten()[:8].tolist()}")
    for t in thoughts:
        if not attended[t.summary_start:t.summary_end].all():
            fail(f"summary of thought {t.index} is not resident")
    prompt = attended[:table.segmenter.start].clone()
    for lo, hi in preset:  # a preset span's detail may be off the device like any thought's
        prompt[lo:hi] = True
    if not attended[table.segmenter.detail_start:].all() or not prompt.all():
        fail("the prompt or the open thought is not resident")
