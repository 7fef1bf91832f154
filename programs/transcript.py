"""Readable transcripts: the thoughts, summaries, tool calls and answers of a run, with the server's ZoomR stats
per request (what stayed on the device, what went to host, what was zoomed into, what the radix tree reused)."""

from __future__ import annotations

import textwrap

# meta_info['zoomr'] keys shown, in order, with short labels; keys the server does not send are left out.
STAT_LABELS = (
    ("thoughts", "thoughts"), ("device_kv_tokens", "device_kv"), ("full_kv_tokens", "full_kv"),
    ("offloaded_tokens", "offloaded"), ("detail_tokens", "detail"), ("summary_tokens", "summaries"),
    ("zoom_tokens", "zoomed"), ("zoom_recalls", "recalls"), ("zoom_evictions", "evictions"),
    ("dropped_tokens", "dropped"), ("reused_host_tokens", "reused_host"), ("thoughts_from_tree", "tree_thoughts"),
)


def stats_line(meta_info: dict | None) -> str:
    meta_info = meta_info or {}
    parts = [f"prompt={meta_info.get('prompt_tokens', '?')}", f"cached={meta_info.get('cached_tokens', '?')}",
             f"out={meta_info.get('completion_tokens', '?')}"]
    z = meta_info.get("zoomr")
    if isinstance(z, dict):
        parts += [f"{label}={z[key]}" for key, label in STAT_LABELS if key in z]
        shown = {k for k, _ in STAT_LABELS} | {"policy", "prompt_tokens", "peak_device_kv_tokens", "forced_markers"}
        parts += [f"{k}={v}" for k, v in sorted(z.items()) if k not in shown and not isinstance(v, (dict, list))]
    else:
        parts.append("zoomr=off")
    return " ".join(parts)


def _block(label: str, text: str, width: int = 100) -> str:
    text = (text or "").strip() or "(empty)"
    body = textwrap.fill(" ".join(text.split()), width=width - 6, initial_indent="", subsequent_indent="      ")
    return f"  {label:<9} {body}"


def render_reasoning(result, title: str | None = None, show_stats: bool = True) -> str:
    """A ``ThinkResult`` (or anything with thoughts/summaries/answer fields) as text."""
    lines = [title] if title else []
    for call in getattr(result, "tool_calls", []) or []:  # the agent's tool calls, in the order they were made
        lines.append(_block("tool", f"calculator({call['expression']}) -> {call['result']}  [{call['source']}]"))
    for i, thought in enumerate(result.thoughts):
        lines.append(_block(f"thought{i + 1}", thought))
        if i < len(result.summaries):
            lines.append(_block("summary", result.summaries[i]))
    lines.append(_block("answer", result.answer_text))
    lines.append(f"  {'extracted':<9} {result.answer if result.answer is not None else '(none: no number found)'}"
                 f"   [thinking ended by {result.ended_by}]")
    if show_stats and result.requests:
        lines.append(f"  {'requests':<9} {len(result.requests)}")
        last = result.requests[-1]
        lines.append(f"  {'zoomr':<9} {stats_line(last[1])}   [last request, {last[0]}]")
    return "\n".join(lines)
