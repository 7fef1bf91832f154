"""Every place where zoomr-sgl attaches to SGLang 0.5.17, in one module, so a reader can list them.

Contract: ``install(config, role)`` registers hooks with SGLang's ``HookRegistry`` (applied by ``load_plugins``
right after the plugin runs) and is called once per process by ``zoomr_sgl.plugin.register``. Nothing here edits
SGLang's files. Each hook names its target and says why it is the narrowest one.

Hooks now:
- ``Scheduler.get_internal_state`` (AFTER, scheduler processes): adds ``zoomr`` (active flag, pid, config) to the
  scheduler's internal state, which ``/server_info`` returns under ``internal_states``; this is how a client sees
  that the plugin runs inside the scheduler, not only in the HTTP process.
- ``http_server.launch_server`` (BEFORE, main process): adds ``GET /zoomr/config`` to SGLang's FastAPI app
  before it starts serving, and the ASGI middleware ``zoomr_sgl.openai_body_check``, which answers with a 400 the
  OpenAI bodies whose shapes SGLang's pydantic validators assume unchecked (an HTTP 500 there, before any handler
  or hook of the request runs).
- ``ATTENTION_BACKENDS["torch_native"]`` (registry re-registration under the same name, scheduler processes): the
  factory returns ``ZoomRTorchNativeAttnBackend`` (``zoomr_sgl.resident_attention``), which attends each request's
  resident set (``req_to_token != 0``). Same name, so SGLang's name checks (Triton off on CPU, no CUDA graphs) hold.
  The internal state's ``zoomr.attention_backend`` names the class the model runner built. ``"flashinfer"`` (CUDA)
  goes through the same loop: ``RESIDENT_BACKENDS`` lists it where FlashInfer imports.
- ``TokenToKVPoolAllocator.free`` (AROUND, scheduler processes): drops holes (slot 0) before the stock free, so no
  stock release path (tree, chunk cache, retract, over-allocation) puts slot 0 on the free list. ``free_segment``,
  ``free_segments`` and ``free_group_end`` all end in ``free``. With ``ZOOMR_SGL_POISON_FREED=1`` (debug) every
  freed slot is then filled with NaN where a reuse could first write it (``zoomr_sgl.poison``).
- ``Scheduler.__init__`` (AFTER, scheduler processes): builds the process's ``ZoomRManager`` once the scheduler has
  its allocator, pools and model runner, and hands it to the attention backend (query capture at scoring layers).
  A scheduler whose model runner did not build a ZoomR attention backend (another backend, a hybrid one) refuses to
  start: it would attend the holes. So does one whose model SGLang serves with windowed or chunked attention
  layers or as an encoder-decoder (``model_runner.sliding_window_size``, ``model_config.is_encoder_decoder``): holes
  inside a window or cross-attention are read by SGLang's own kernels. The backend gets the manager as
  ``hole_source`` (its plans read the rows' hole counts from it instead of the device).
- ``SchedulerBatchResultProcessor.process_batch_result_prefill`` / ``process_batch_result_decode`` (AFTER): the
  step's sampled tokens are in ``req.output_ids``; the manager segments, offloads, decides markers and zooms there.
  With the overlap scheduler the next forward is already running then (``zoomr_sgl.manager``'s contract).
- Each hook that calls the manager times the manager's part (never SGLang's) into ``MANAGER.clock``
  (``zoomr_sgl.host_clock``), which ``/server_info`` reports: ZoomR's host milliseconds per decode step, per hook.
- ``Scheduler.run_batch`` (BEFORE, every batch): the last point before SGLang launches a forward, the one it numbers
  ``forward_ct + 1`` (``batch.forward_iter``): the manager fixes what that forward reads (hole counts for its plan,
  landed copies, forced tokens).
- ``ModelRunner.sample`` (AROUND): inside the forward, after the model: the manager keeps the forward's scoring
  queries and replaces the sampled id of rows with a forced engine-mode marker token, before SGLang stashes it as the
  next step's input, so text, stop checks and KV agree.
- ``mem_cache.common.release_kv_cache`` (BEFORE): the one path of finish, abort and retraction; the manager frees
  what it holds beyond the request's row, publishes final stats and, with the ZoomR tree and ``is_insert``, hands
  its host blocks to the tree (``req.zoomr_host_spans``) before SGLang calls the tree's ``cache_finished_req``.
- ``register_radix_cache_backend("zoomr", ...)`` (radix-cache registry, scheduler processes, which build the tree in
  ``create_tree_cache``; guarded because the registry raises on a duplicate name): ``ZoomRRadixCache``
  (``zoomr_sgl.radix_tree``), a ``RadixCache`` whose finished thoughts are host-backed detail nodes and device
  summary nodes, with device-only accounting. Selected by ``--radix-cache-backend zoomr``, which the launcher adds
  with ``--enable-zoomr``; the factory falls back to SGLang's own choice with ``--disable-radix-cache``.
- Admission and retraction (scheduler processes; ``zoomr_sgl.admission`` says what a bounded request is charged):
  ``PrefillAdder._get_running_request_total_token_offset`` (AROUND): a running bounded request reserves its bound
  minus what it holds, not ``min(max_new - out, 4096) * new_token_ratio``; ``PrefillAdder.add_one_req`` and
  ``add_chunked_req`` (AROUND): for the call, a waiting bounded request's ``max_new_tokens`` reads as its output so
  far plus its bounded growth, the only thing the adder reads it for (gate and charge), and the growth the adder's
  4096 clip cut off is added to its reserve; ``NewTokenRatioTracker.estimate_new_token_ratio_after_retract``
  (AROUND): bounded requests do not drag the ratio that scales full requests' reserve; and
  ``ScheduleBatch._get_decode_retraction_order`` (AROUND): bounded requests are retracted last (they free little and
  would come back as a full-KV re-prefill). These are the methods that compute the reserve, so requests with
  policy ``full`` (and ZoomR off) keep stock accounting. After each decode result (the hook above),
  ``reopen_admission`` clears ``running_batch.batch_is_full`` when ZoomR's frees left room for the first waiting
  prompt: SGLang only clears it when a request finishes, and ZoomR frees slots while requests run.
- ``Req.update_finish_state`` (AROUND, scheduler processes): a stop string completed by the last token the limit
  allows ends the request as that stop (``finish_reason`` ``stop``, the string trimmed from the text), as it does one
  token earlier. SGLang 0.5.17 checks ``max_new_tokens`` first and reports ``length`` with the stop string left in
  the text, so a program that relies on its stop strings (``programs/``) would write a marker twice.
- ``TokenizerManager._validate_one_request`` (BEFORE, main process): an empty prompt (``[]`` in a batch of
  ``input_ids``, or a text that tokenizes to nothing) and token ids outside the model's vocabulary are a
  ``ValueError`` (HTTP 400); SGLang 0.5.17 passes them on and the scheduler dies in the forward. The
  request's ``zoomr_*`` settings are checked here (``custom_params`` of ``/generate``, ``/v1/completions`` and
  ``/v1/chat/completions``, single or batched: every path validates here first) with the model's layer count
  (``model_config``, the config the scheduler builds its pool from), which ``SamplingParams.verify`` does not know.
  So is what else a request may ask (``zoomr_sgl.request_validation``): known ``sampling_params`` keys of strict
  types, stop strings and ids, logprob ranges within the vocabulary, no constrained decoding without CUDA. SGLang
  0.5.17 answers these with a dead scheduler or an HTTP 500.
- ``GenerateReqInput._validate_inputs`` (BEFORE, main process): the request's batch shape (one ``sampling_params``
  object and one ``rid`` string for one prompt, one per prompt for a batch, an integer ``n``), which
  ``normalize_batch_and_arguments`` reads right after this, its first step, and fails on with a 500.
- ``TokenizerManager._init_req_state`` (BEFORE, main process): the one call that has the HTTP request, whose parsed
  body still holds what ``GenerateReqInput`` dropped: a literal ``extra_body`` is a 400 (an OpenAI-client argument;
  its ``custom_params`` would otherwise be ignored without a word).
- ``Scheduler._add_request_to_queue`` (BEFORE, scheduler processes, new requests only): ``ZoomRManager.screen``
  puts the request's effective config on it, or aborts it there, before it takes any slot, as SGLang aborts its own
  invalid requests; an abort after the prefill would change what the release frees.
- ``TokenizerManager._wait_one_response`` (AROUND, main process): per-token ``customized_info['zoomr']`` lists
  become one ``meta_info['zoomr']`` dict, the latest stats (``zoomr_sgl.stream_stats``: O(1) per chunk).
"""

from __future__ import annotations

import os

import torch

from zoomr_sgl.config import ZoomRConfig

SCHEDULER_STATE = "sglang.srt.managers.scheduler.Scheduler.get_internal_state"
HTTP_LAUNCH = "sglang.srt.entrypoints.http_server.launch_server"
ALLOCATOR_FREE = "sglang.srt.mem_cache.allocator.token.TokenToKVPoolAllocator.free"
CONFIG_ROUTE = "/zoomr/config"
SCHEDULER_INIT = "sglang.srt.managers.scheduler.Scheduler.__init__"
RUN_BATCH = "sglang.srt.managers.scheduler.Scheduler.run_batch"
RESULT_PROCESSOR = "sglang.srt.managers.scheduler_components.batch_result_processor.SchedulerBatchResultProcessor"
SAMPLE = "sglang.srt.model_executor.model_runner.ModelRunner.sample"
RELEASE_KV = "sglang.srt.mem_cache.common.release_kv_cache"
WAIT_RESPONSE = "sglang.srt.managers.tokenizer_manager.TokenizerManager._wait_one_response"
VALIDATE_SHAPE = "sglang.srt.managers.io_struct.GenerateReqInput._validate_inputs"
INIT_REQ_STATE = "sglang.srt.managers.tokenizer_manager.TokenizerManager._init_req_state"
VALIDATE_REQUEST = "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request"
ADD_TO_QUEUE = "sglang.srt.managers.scheduler.Scheduler._add_request_to_queue"
ADDER = "sglang.srt.managers.schedule_policy.PrefillAdder"
RETRACT_RATIO = ("sglang.srt.managers.scheduler_components.new_token_ratio_tracker.NewTokenRatioTracker"
                 ".estimate_new_token_ratio_after_retract")
RETRACT_ORDER = "sglang.srt.managers.schedule_batch.ScheduleBatch._get_decode_retraction_order"
FINISH_STATE = "sglang.srt.managers.schedule_batch.Req.update_finish_state"

# The scheduler process's manager (one scheduler per process); None until Scheduler.__init__ ran.
MANAGER = None
_POOL_SEEN = [0]  # the allocator's free slots when reopen_admission last looked (its only writer)


def zoomr_state(config: ZoomRConfig) -> dict:
    """What a process reports about ZoomR: enough for a client to tell where it runs and with which settings."""
    return {"active": True, "pid": os.getpid(), "config": config.to_dict()}


def attention_backend_name(scheduler) -> str:
    """The class name of the attention backend the scheduler's model runner built."""
    return type(scheduler.tp_worker.model_runner.attn_backend).__name__


def register_resident_attention() -> None:
    """Re-register each name in ``RESIDENT_BACKENDS`` with a factory building the ZoomR subclass; idempotent."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend

    from zoomr_sgl.resident_attention import RESIDENT_BACKENDS

    for name, backend_cls in RESIDENT_BACKENDS.items():
        stock = ATTENTION_BACKENDS.get(name)
        if stock is None or getattr(stock, "zoomr_resident", False):
            continue

        def factory(runner, backend_cls=backend_cls):
            return backend_cls(runner)

        factory.zoomr_resident = True
        factory.zoomr_stock_factory = stock
        register_attention_backend(name)(factory)


def register_radix_tree() -> None:
    """Register the ``zoomr`` radix-cache backend once per process."""
    from zoomr_sgl.radix_tree import register_backend

    register_backend()


_KNOWN_SLOTS = False  # set while ZoomR frees slots it knows hold no hole


def free_without_holes(original, allocator, free_index):
    """AROUND ``TokenToKVPoolAllocator.free``: a hole (0) in a freed ``req_to_token`` span is not a slot. The check
    reads the device; ZoomR's own frees skip it (``free_known_slots``)."""
    if not _KNOWN_SLOTS and free_index.numel() and not bool((free_index != 0).all()):
        free_index = free_index[free_index != 0]
    if MANAGER is not None and MANAGER.poison is not None and free_index.numel():
        MANAGER.poison.fill(free_index)
    return original(allocator, free_index)


def free_known_slots(allocator, slots) -> None:
    """Free slots that hold no hole (resident positions or fresh slots) without the hole check's device read."""
    global _KNOWN_SLOTS
    _KNOWN_SLOTS = True
    try:
        allocator.free(slots)
    finally:
        _KNOWN_SLOTS = False


def reopen_admission(scheduler) -> None:
    """After one refused admission SGLang admits nothing (``running_batch.batch_is_full``) until a request of the
    running batch finishes or is retracted (``Scheduler.update_running_batch``). ZoomR frees device slots while its
    requests run (a thought's detail landed on the host, a prompt's sentences demoted, a summary-only detail
    dropped), and with nothing finishing a waiting request would wait for room that is already free (seen on an
    H100: 5 of 16 long prompts queued for a whole generation with the pool 8% used). So, once per decode step: if the
    pool's free slots grew since the last step and now cover the first waiting request's prompt, the flag is
    cleared and the next scheduling pass asks SGLang's adder again, whose own check still decides. O(1)."""
    free = MANAGER.allocator.available_size()
    grew, _POOL_SEEN[0] = free > _POOL_SEEN[0], free
    batch, waiting = scheduler.running_batch, scheduler.waiting_queue
    if not (grew and batch.batch_is_full and waiting):
        return
    if free + scheduler.tree_cache.evictable_size() >= len(waiting[0].origin_input_ids):
        batch.batch_is_full = False


def stop_string_beats_length(original, req, *args, **kwargs):
    """``Req.update_finish_state`` where a stop string completed at the token limit counts as the stop."""
    from sglang.srt.managers.schedule_batch import FINISH_LENGTH

    was_finished = req.finished()
    original(req, *args, **kwargs)
    if was_finished or not isinstance(req.finished_reason, FINISH_LENGTH):
        return None
    length_reason, length = req.finished_reason, req.finished_len
    req.finished_reason = None
    if not req._check_str_based_finish(*args, **kwargs):  # sets the stop reason and its trimmed length
        req.finished_reason, req.finished_len = length_reason, length
    return None


def install_manager_hooks(config: ZoomRConfig) -> None:
    """Scheduler-process hooks that drive ``ZoomRManager`` (see the module docstring for each target)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    def build_manager(result, scheduler, *args, **kwargs):
        global MANAGER
        from zoomr_sgl.manager import ZoomRManager

        from zoomr_sgl.resident_attention import RESIDENT_BACKENDS

        backend = scheduler.tp_worker.model_runner.attn_backend
        if not isinstance(backend, tuple(RESIDENT_BACKENDS.values())):  # it would attend holes: refuse to serve
            raise RuntimeError(f"ZoomR needs a resident-set attention backend ({', '.join(RESIDENT_BACKENDS)}); this "
                               f"scheduler built {type(backend).__name__}")
        runner = scheduler.tp_worker.model_runner
        if getattr(runner, "sliding_window_size", None) is not None or runner.model_config.is_encoder_decoder:
            raise RuntimeError("ZoomR cannot serve this model: SGLang runs it with windowed or chunked attention "
                               "layers or as an encoder-decoder, whose kernels would read the holes ZoomR leaves")
        MANAGER = ZoomRManager(config, scheduler, query_buffers=getattr(backend, "query_buffers", None))
        if hasattr(backend, "query_sink"):
            backend.query_sink = MANAGER
        backend.hole_source = MANAGER
        return result

    def after_prefill(result, processor, batch, *args, **kwargs):
        if MANAGER is not None:
            MANAGER.clock.call("after_prefill", MANAGER.after_prefill, batch)
        return result

    def after_decode(result, processor, batch, *args, **kwargs):
        if MANAGER is not None:
            MANAGER.clock.call("after_decode", MANAGER.after_decode, batch)
            MANAGER.clock.call("admission", reopen_admission, MANAGER.scheduler)
            MANAGER.clock.step()
        return result

    def before_run_batch(scheduler, batch, *args, **kwargs):
        if MANAGER is not None and batch is not None:
            # run_batch numbers the forward it launches forward_ct + 1, first thing
            MANAGER.clock.call("before_forward", MANAGER.before_forward, batch, scheduler.forward_ct + 1)
        return None

    def force_sampled(original, runner, logits_output, forward_batch, *args, **kwargs):
        ids = original(runner, logits_output, forward_batch, *args, **kwargs)
        return ids if MANAGER is None else MANAGER.clock.call("on_sample", MANAGER.on_sample, ids, logits_output,
                                                              forward_batch)

    def screen_new_request(scheduler, req, is_retracted=False, *args, **kwargs):
        if MANAGER is not None and not is_retracted:
            MANAGER.clock.call("screen", MANAGER.screen, req)
        return None

    def before_release(req, tree_cache=None, is_insert=True, *args, **kwargs):
        if MANAGER is not None:
            MANAGER.clock.call("release", MANAGER.release, req, is_insert=is_insert)
        return None

    HookRegistry.register(SCHEDULER_INIT, build_manager, HookType.AFTER)
    HookRegistry.register(RESULT_PROCESSOR + ".process_batch_result_prefill", after_prefill, HookType.AFTER)
    HookRegistry.register(RESULT_PROCESSOR + ".process_batch_result_decode", after_decode, HookType.AFTER)
    HookRegistry.register(RUN_BATCH, before_run_batch, HookType.BEFORE)
    HookRegistry.register(SAMPLE, force_sampled, HookType.AROUND)
    HookRegistry.register(RELEASE_KV, before_release, HookType.BEFORE)
    HookRegistry.register(ADD_TO_QUEUE, screen_new_request, HookType.BEFORE)
    install_admission_hooks()


def install_admission_hooks() -> None:
    """SGLang's admission and retraction, charging bounded ZoomR requests their bound (``zoomr_sgl.admission``)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    def running_offset(original, adder, req, *args, **kwargs):
        growth = MANAGER.clock.call("admission", MANAGER.admission.running_growth, req) if MANAGER is not None else None
        return original(adder, req, *args, **kwargs) if growth is None else growth

    def admit_new(original, adder, req, *args, **kwargs):
        growth = MANAGER.clock.call("admission", MANAGER.admission.new_growth, req) if MANAGER is not None else None
        if growth is None:
            return original(adder, req, *args, **kwargs)
        params, before = req.sampling_params, len(adder.can_run_list)
        saved = params.max_new_tokens
        params.max_new_tokens = len(req.output_ids) + growth  # the adder's gate and charge read this, nothing else
        try:
            result = original(adder, req, *args, **kwargs)
        finally:
            params.max_new_tokens = saved
        taken = any(r is req for r in adder.can_run_list[before:]) and result is not req
        if taken:
            MANAGER.admission.admitted(req)  # its host rows are promised from here until its release
        whole = taken and adder.new_chunked_req is not req  # admitted with its growth charged (not a middle chunk)
        if whole:  # SGLang charged min(growth + output, its clip): add what the clip cut off
            adder.rem_total_token_offset += max(0, growth - min(len(req.output_ids) + growth, MANAGER.admission.clip()))
        return result

    def ratio_without_bounded(original, reqs, *args, **kwargs):
        if MANAGER is not None:
            reqs = [r for r in reqs if not MANAGER.admission.is_bounded(r)]
        return original(reqs, *args, **kwargs)

    def retract_bounded_last(original, reqs, *args, **kwargs):
        order = original(reqs, *args, **kwargs)
        if MANAGER is None:
            return order
        bounded = {i for i in order if MANAGER.admission.is_bounded(reqs[i])}
        # popped from the end: unbounded requests go first (they free the most and come back cheaply)
        return [i for i in order if i in bounded] + [i for i in order if i not in bounded]

    HookRegistry.register(ADDER + "._get_running_request_total_token_offset", running_offset, HookType.AROUND)
    HookRegistry.register(ADDER + ".add_one_req", admit_new, HookType.AROUND)
    HookRegistry.register(ADDER + ".add_chunked_req", admit_new, HookType.AROUND)
    HookRegistry.register(RETRACT_RATIO, ratio_without_bounded, HookType.AROUND)
    HookRegistry.register(RETRACT_ORDER, retract_bounded_last, HookType.AROUND)


def install_http_hooks(config: ZoomRConfig) -> None:
    """Main-process hooks: request validation (HTTP 400: ``zoomr_*`` settings, token ids) and ``meta_info['zoomr']``."""
    from sglang.srt.managers.io_struct import GenerateReqInput
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from zoomr_sgl import request_validation
    from zoomr_sgl.request_params import request_config
    from zoomr_sgl.stream_stats import StatsFollower

    async def latest_zoomr_stats(original, *args, **kwargs):
        follower = StatsFollower()
        async for out in original(*args, **kwargs):
            meta = out.get("meta_info") if isinstance(out, dict) else None
            if meta is not None:
                follower.follow(meta)
            yield out

    def validate_request(manager, obj, input_ids, *args, **kwargs):
        vocab = manager.model_config.vocab_size
        request_validation.check_prompt_ids(input_ids, vocab)
        params = getattr(obj, "sampling_params", None)
        if isinstance(obj, GenerateReqInput):
            request_validation.check_sampling_params(params, vocab, torch.cuda.is_available())
            request_validation.check_logprob_args(obj.return_logprob, obj.logprob_start_len, obj.top_logprobs_num,
                                                  vocab)
        custom = params.get("custom_params") if isinstance(params, dict) else None
        request_validation.check_zoomr_integers(custom)
        request_config(config, custom, manager.model_config.num_hidden_layers)  # layers are known here only
        return None

    def validate_shape(obj, *args, **kwargs):
        request_validation.check_request_shape(obj.text, obj.input_ids, obj.sampling_params, obj.rid)
        return None

    def validate_body(manager, obj, request=None, *args, **kwargs):
        # the body as SGLang's ORJSONRequest parsed it (FastAPI dropped the fields GenerateReqInput does not have)
        request_validation.check_raw_body(getattr(request, "_json", None))
        return None

    HookRegistry.register(VALIDATE_REQUEST, validate_request, HookType.BEFORE)
    HookRegistry.register(VALIDATE_SHAPE, validate_shape, HookType.BEFORE)
    HookRegistry.register(INIT_REQ_STATE, validate_body, HookType.BEFORE)
    HookRegistry.register(WAIT_RESPONSE, latest_zoomr_stats, HookType.AROUND)


def install(config: ZoomRConfig, role: str) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    def report_state(result, scheduler, *args, **kwargs):  # result: GetInternalStateReqOutput
        state = {**zoomr_state(config), "attention_backend": attention_backend_name(scheduler)}
        if MANAGER is not None:
            from zoomr_sgl.manager_report import server_state

            state["manager"] = server_state(MANAGER)
        result.internal_state["zoomr"] = state
        return result

    if role == "worker":
        HookRegistry.register(SCHEDULER_STATE, report_state, HookType.AFTER)
        register_resident_attention()
        register_radix_tree()
        HookRegistry.register(ALLOCATOR_FREE, free_without_holes, HookType.AROUND)
        HookRegistry.register(FINISH_STATE, stop_string_beats_length, HookType.AROUND)
        install_manager_hooks(config)
    else:
        def add_routes(*args, **kwargs):
            from sglang.srt.entrypoints.http_server import app

            if not any(getattr(r, "path", None) == CONFIG_ROUTE for r in app.routes):
                app.add_api_route(CONFIG_ROUTE, lambda: zoomr_state(config), methods=["GET"])
            from zoomr_sgl.openai_body_check import OpenAIBodyCheck

            if not any(m.cls is OpenAIBodyCheck for m in app.user_middleware):
                app.add_middleware(OpenAIBodyCheck)
            return None

        HookRegistry.register(HTTP_LAUNCH, add_routes, HookType.BEFORE)
        install_http_hooks(config)
