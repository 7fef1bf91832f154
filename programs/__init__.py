"""ZoomR programs: SGLang frontend-language programs and a multi-turn agent pipeline that talk to a ZoomR server
over HTTP.

Modules (one concept each):
- ``protocol``: the text the programs write (chat turns, thinking and summary markers, stop strings) and the
  ``Limits`` every generation is bounded by;
- ``settings``: per-request ZoomR settings (``custom_params`` ``zoomr_*`` keys), checked locally before sending;
- ``errors``: the one-line errors programs raise (bad input, unreachable server, refused request);
- ``client``: a small HTTP client for ``/generate`` (requests), used by the agent;
- ``endpoint``: ``ZoomREndpoint``, SGLang's ``RuntimeEndpoint`` plus ZoomR settings and request ids;
- ``think_summarize``: ``@sgl.function`` think-summarize-continue and its parallel ``fork`` variant (CLI);
- ``answers``: final-answer extraction and the majority vote;
- ``calculator``: the agent's tool, a safe arithmetic evaluator (``ast``, no ``eval``);
- ``agent``: the multi-turn agent over HTTP, reusing earlier turns through prefix matching (CLI);
- ``transcript``: readable transcripts (thoughts, summaries, tool calls, ZoomR stats);
- ``cli``: command-line plumbing shared by the entry points (progress, one-line errors, exit status 2).

Program mode: the programs write the summary markers themselves, so every request carries
``zoomr_summary_mode: "program"`` and the server forces nothing.
"""
