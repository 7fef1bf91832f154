#!/usr/bin/env bash
# One device call on the H100: unpack the SGLang runtime, then the phases asked for (GPU tests, kernel benchmark,
# launch.py --enable-zoomr on the embedded model, Qwen3-8B long generations, the server tests), logged under $OUT.
#
#   here (CPU host), once:  scripts/gpu_run.sh --prepare     # fills .gpu/ (runtime archive, pure-python test deps)
#   on the device:          bash scripts/gpu_run.sh [long] [tests] [bench] [e2e] [suite] [capacity-launch]
#                           [capacity-start] [capacity] [capacity-stop] [jit-warm] [train] [accuracy] [long-prompts]
#                           (default: tests bench e2e; long runs in the background beside the later phases)
#                           writes $OUT/results/{kernels,serve_long,capacity}.{json,md,png}, $OUT/gpu_run.log,
#                           $OUT/logs.tgz
#                           within $BUDGET_S seconds (default 570)
#                           with carry [".gpu", ".models"]
set -uo pipefail
cd "$(dirname "$0")/.."
ARCHIVE=sglang-0.5.17-py312-cu130-site.tar.xz

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p .gpu/pylib
  cp -n "../shared/gpu-runtime/$ARCHIVE" .gpu/
  cp -r ../shared/gpu-runtime/configs .gpu/  # model configs for --load-format dummy
  site=.venv/lib/python3.11/site-packages  # pure-python packages (psutil's extension is abi3) the archive lacks
  for p in pytest _pytest pluggy iniconfig py.py pytest_timeout.py psutil requests urllib3 idna certifi \
           charset_normalizer; do
    cp -r "$site/$p" .gpu/pylib/
  done
  find .gpu/pylib -name __pycache__ -prune -exec rm -rf {} +
  du -sh .gpu .models
  exit 0
fi

OUT=${OUT:-/tmp/zoomr-gpu-out}
mkdir -p "$OUT"
PHASES=("$@"); [[ ${#PHASES[@]} -eq 0 ]] && PHASES=(tests bench e2e)
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-570} ))  # everything ends (and the logs are bundled) before the device's limit
left() { local n=$(( DEADLINE - $(date +%s) - ${1:-0} )); (( n < 1 )) && n=1; (( n > ${2:-100000} )) && n=$2; echo $n; }
wait_ready() {  # port pid: until /health_generate answers, the process dies, or the deadline
  while (( $(date +%s) < DEADLINE - 30 )); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$1/health_generate', timeout=5)" 2>/dev/null \
      && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}
LONG_PID=""
exec > >(tee -a "$OUT/gpu_run.log") 2>&1
stamp() { echo "[$(date +%H:%M:%S)] $*"; }

stamp "unpacking the runtime"
if [[ ! -d /tmp/site/sglang ]]; then
  python3 -c "import tarfile; tarfile.open('.gpu/$ARCHIVE').extractall('/tmp/site')" || { stamp "unpack failed"; exit 1; }
fi
# zoomr-sgl itself: the repository on the path plus the entry point SGLang's plugin loader looks for
mkdir -p /tmp/site/zoomr_sgl-0.1.0.dist-info
printf 'Metadata-Version: 2.1\nName: zoomr-sgl\nVersion: 0.1.0\n' > /tmp/site/zoomr_sgl-0.1.0.dist-info/METADATA
printf '[sglang.srt.plugins]\nzoomr = zoomr_sgl.plugin:register\n' > /tmp/site/zoomr_sgl-0.1.0.dist-info/entry_points.txt
export PYTHONPATH="/tmp/site:$PWD"
export FLASHINFER_WORKSPACE_BASE=/tmp/fi PYTHONUNBUFFERED=1  # JIT-compiled kernels stay in /tmp on a warm machine
# test-only packages the device may lack: link just the missing ones, so the device's own copies win
mkdir -p /tmp/pylib
for mod in pytest pluggy iniconfig pytest_timeout psutil requests urllib3 idna certifi charset_normalizer; do
  if ! python3 -c "import $mod" 2>/dev/null; then
    for src in .gpu/pylib/$mod .gpu/pylib/$mod.py; do [[ -e $src ]] && ln -sf "$PWD/$src" /tmp/pylib/; done
    [[ $mod == pytest ]] && ln -sf "$PWD/.gpu/pylib/_pytest" "$PWD/.gpu/pylib/py.py" /tmp/pylib/
  fi
done
export PYTHONPATH="$PYTHONPATH:/tmp/pylib"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.csv" 2>&1
python3 -c "import torch, triton, flashinfer, sglang; print('torch', torch.__version__, 'triton', triton.__version__,
'flashinfer', flashinfer.__version__, 'sglang', sglang.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"

# The capacity servers (stock, stock with ZoomR's flags, launch.py --enable-zoomr) live across device calls: started
# detached (setsid) on fixed ports, their pids and logs in $CAP_DIR, their flags from benchmarks/capacity.py itself.
CAP_DIR=/tmp/capacity
CAP_NAMES=(stock stock_zoomr_flags zoomr zoomr_no_overlap)
CAP_URL_FLAGS=(--url-stock --url-stock-flags --url-zoomr --url-zoomr-no-overlap)
CAP_SERVERS=${CAPACITY_SERVERS:-stock,zoomr}
CAP_BASE_PORT=$([[ ${CAPACITY_WHOLE_GPU:-0} == 1 ]] && echo 30031 || echo 30021)  # whole-GPU servers apart
CAP_LENGTHS=${CAPACITY_LENGTHS:-4096,8192,16384,32768}
# Admission promises a bounded request max_new_tokens host rows: the store must hold every admitted request's detail
# (16 x 32K = 524K rows), or the rest run on stock accounting. 560K rows of Qwen3-8B are 77 GiB of the H200 host's 128.
cap_flags() {  # the benchmark's server-shaping flags: the same for --print-server-argv and the run
  local f=(--model-path /tmp/qwen3-8b --load-format dummy --lengths "$CAP_LENGTHS"
           "--zoomr-server-flags=${CAPACITY_ZOOMR_FLAGS:---zoomr-host-store-tokens 560000}")
  [[ -n ${CAPACITY_MAX_TOTAL_TOKENS:-} ]] && f+=(--max-total-tokens "$CAPACITY_MAX_TOTAL_TOKENS")
  [[ ${CAPACITY_WHOLE_GPU:-0} == 1 ]] && f+=(--whole-gpu)
  printf '%q ' "${f[@]}"
}
cap_wanted() { [[ ",$CAP_SERVERS," == *",$1,"* ]]; }
cap_answers() { python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$1/health_generate', timeout=20)" 2>/dev/null; }
cap_start() {  # [nowait]: start what does not answer yet, all side by side, then (unless nowait) wait for all
  # Side by side, so the 4-6 minute starts overlap (FlashInfer compiles once into /tmp/fi for all). SGLang keeps
  # (1 - --mem-fraction-static) x (memory free when the server starts) as slack and gives the rest to the pool, which
  # --max-total-tokens caps; a high fraction (0.85) leaves every server its capped pool whatever the others took
  # first. A server already starting (pid alive) is not started again.
  mkdir -p "$CAP_DIR" /tmp/qwen3-8b && cp .gpu/configs/qwen3-8b/config.json .gpu/configs/tiny-tokenizer/* /tmp/qwen3-8b/
  local i name port pid argv args
  for i in "${!CAP_NAMES[@]}"; do
    name=${CAP_NAMES[$i]}; port=$((CAP_BASE_PORT + i))
    cap_wanted "$name" || continue
    if cap_answers $port; then stamp "capacity: $name already answers on $port"; continue; fi
    pid=$(cat "$CAP_DIR/$name.pid" 2>/dev/null)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then stamp "capacity: $name (pid $pid) is still starting"; continue; fi
    argv=$(eval "python3 benchmarks/capacity.py --print-server-argv $name $(cap_flags) \
      --mem-fraction-static ${CAPACITY_MEM_FRACTION:-0.85} -- --cuda-graph-max-bs ${CAPACITY_GRAPH_BS:-64} \
      ${CAPACITY_SGLANG_FLAGS:-}") || return 1
    eval "args=($argv)"
    setsid nohup python3 launch.py "${args[@]}" --host 127.0.0.1 --port $port > "$CAP_DIR/$name.log" 2>&1 < /dev/null &
    pid=$!; echo $pid > "$CAP_DIR/$name.pid"
    stamp "capacity: started $name (pid $pid) on $port: launch.py $argv"
  done
  [[ ${1:-} == nowait ]] && return 0
  local rc=0
  for i in "${!CAP_NAMES[@]}"; do
    name=${CAP_NAMES[$i]}; port=$((CAP_BASE_PORT + i))
    cap_wanted "$name" || continue
    cap_answers $port && continue
    if wait_ready $port "$(cat "$CAP_DIR/$name.pid" 2>/dev/null)"; then stamp "capacity: $name ready"
    else stamp "capacity: $name not ready"; tail -20 "$CAP_DIR/$name.log"; rc=1; fi
  done
  return $rc
}
stop_group() {  # pid seconds: end the process group $1 (a setsid leader), TERM, then KILL after $2 seconds
  kill -TERM -- -"$1" 2>/dev/null
  for _ in $(seq "$2"); do kill -0 -- -"$1" 2>/dev/null || break; sleep 1; done
  kill -KILL -- -"$1" 2>/dev/null
}
cap_stop() {  # end the process groups this script started (by pid file)
  local f
  for f in "$CAP_DIR"/*.pid; do
    [[ -e $f ]] || continue
    stop_group "$(cat "$f")" 20; rm -f "$f"; stamp "capacity: stopped $(basename "$f" .pid)"
  done
}

for phase in "${PHASES[@]}"; do
  case $phase in
    tests)
      stamp "GPU tests"
      timeout $(left 60 300) python3 -m pytest -m gpu -p no:cacheprovider -o addopts="" -q -rA \
        ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} tests/test_kernels.py tests/test_flashinfer_resident.py \
        tests/core/test_sentence_index.py tests/core/test_host_store.py --junitxml="$OUT/gpu_tests.xml" \
        > "$OUT/gpu_tests.log" 2>&1
      echo "pytest rc=$?" | tee -a "$OUT/gpu_tests.log"; tail -5 "$OUT/gpu_tests.log"
      ;;
    bench)
      stamp "kernel benchmark"
      timeout $(left 30 400) python3 benchmarks/bench_kernels.py --out "$OUT/results" > "$OUT/bench.log" 2>&1
      echo "bench rc=$?" | tee -a "$OUT/bench.log"; tail -15 "$OUT/bench.log"
      ;;
    long-prompts)
      # SentenceKV's yardstick (benchmarks/long_prompts.py) on Qwen3-8B with random weights: stock, then launch.py
      # --enable-zoomr, each started here alone (16 x 32K prompts need a 530K-token pool each; the sentences of all
      # of them fit the 560K-row host store). Needs a call of its own: two server starts (the second finds the
      # FlashInfer kernels compiled) and three rows per prompt length.
      stamp "long prompts: ${LONG_PROMPT_LENGTHS:-4K,16K,32K} x ${LONG_PROMPT_BATCH:-16}"
      mkdir -p /tmp/qwen3-8b && cp .gpu/configs/qwen3-8b/config.json .gpu/configs/tiny-tokenizer/* /tmp/qwen3-8b/
      timeout -s TERM $(left 30) python3 benchmarks/long_prompts.py --model-path /tmp/qwen3-8b --load-format dummy \
        --prompt-lengths "${LONG_PROMPT_LENGTHS:-4K,16K,32K}" --batch "${LONG_PROMPT_BATCH:-16}" \
        --max-total-tokens "${LONG_PROMPT_POOL:-540000}" --mem-fraction-static 0.85 \
        "--zoomr-server-flags=--zoomr-host-store-tokens 560000" --out "$OUT/results" \
        -- --cuda-graph-max-bs 32 > "$OUT/long_prompts.log" 2>&1
      echo "long_prompts rc=$?"; grep '^|' "$OUT/results/long_prompts.md" 2>/dev/null | tail -12
      ;;
    long)
      # Qwen3-8B (random weights) for long engine-mode generations, ZoomR and full KV on the same server; in the
      # background, beside the phases after it (one GPU, pools sized by --max-total-tokens); waited for at the end.
      stamp "long: Qwen3-8B engine-mode generations (background)"
      mkdir -p /tmp/qwen3-8b && cp .gpu/configs/qwen3-8b/config.json .gpu/configs/tiny-tokenizer/* /tmp/qwen3-8b/
      timeout $(left 20) python3 benchmarks/serve_long.py --model-path /tmp/qwen3-8b --load-format dummy \
        --batch ${LONG_BATCH:-8} --tokens ${LONG_TOKENS:-2048} ${LONG_ARGS:-} --policies zoomr,full --out "$OUT/results" -- \
        --max-total-tokens 120000 --cuda-graph-max-bs 16 --disable-prefill-cuda-graph > "$OUT/serve_long.log" 2>&1 &
      LONG_PID=$!
      ;;
    e2e)
      # The embedded model with ZoomR, default flags: time to ready and one /generate.
      stamp "e2e: embedded model ready + one /generate"
      start=$(date +%s.%N)
      python3 launch.py --enable-zoomr --max-total-tokens 200000 --host 127.0.0.1 --port 30001 \
        > "$OUT/server_zoomr.log" 2>&1 &
      z=$!
      wait_ready 30001 $z
      echo "zoomr embedded: time_to_ready_s=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")" | tee "$OUT/e2e.txt"
      python3 - >> "$OUT/e2e.txt" 2>&1 <<'PY'
import json, urllib.request as u
body = json.dumps({"text": "Let me think step by step.", "sampling_params": {"max_new_tokens": 32, "temperature": 0}})
r = u.urlopen(u.Request("http://127.0.0.1:30001/generate", body.encode(), {"Content-Type": "application/json"}), timeout=120)
print(r.read().decode())
info = json.loads(u.urlopen("http://127.0.0.1:30001/server_info", timeout=30).read())
print("zoomr state:", json.dumps(info["internal_states"][0].get("zoomr"))[:400])
PY
      cat "$OUT/e2e.txt"
      kill $z 2>/dev/null; wait $z 2>/dev/null
      ;;
    suite)
      # The server tests (exactness against stock, offload + recall, radix reuse over holed prefixes, demotion, the
      # overlap scheduler's tests with freed slots poisoned) against the embedded model on FlashInfer with decode
      # CUDA graphs (up to batch 16, as stock). The fixtures attach to servers started here with the flags they would
      # use: ZoomR without and with the overlap scheduler (the CUDA default), stock, and the radix tests' small pool.
      stamp "server tests on the GPU"
      zoomr=(--enable-zoomr --zoomr-zoom-budget 512 --zoomr-zoom-topk 3 --enable-metrics ${SUITE_SERVER_FLAGS:-})
      extra=(--cuda-graph-max-bs 16 --disable-prefill-cuda-graph)
      debug=(env ZOOMR_SGL_STEP_PROBE=1 ZOOMR_SGL_CHECK_HOLES=1 ZOOMR_SGL_POISON_FREED=1)
      z=""; plain_url=http://127.0.0.1:30014 deselect=(-k "not plain and not runs_with_zoomr")
      if [[ ${SUITE_PLAIN:-1} == 1 ]]; then  # SUITE_PLAIN=0: every ZoomR test against the overlap server only
        "${debug[@]}" python3 launch.py "${zoomr[@]}" --disable-overlap-schedule --max-total-tokens 200000 \
          "${extra[@]}" --host 127.0.0.1 --port 30011 > "$OUT/suite_zoomr.log" 2>&1 &
        z=$! plain_url=http://127.0.0.1:30011 deselect=()
      fi
      "${debug[@]}" python3 launch.py "${zoomr[@]}" --max-total-tokens 200000 "${extra[@]}" --host 127.0.0.1 --port 30014 \
        > "$OUT/suite_overlap.log" 2>&1 &
      ov=$!
      python3 launch.py --enable-metrics --max-total-tokens 200000 "${extra[@]}" ${SUITE_SERVER_FLAGS:-} --host 127.0.0.1 --port 30012 \
        > "$OUT/suite_stock.log" 2>&1 &
      st=$!
      files=(${SUITE_FILES:-tests/test_overlap.py tests/test_resident_attention.py tests/test_zoomr_serving.py
             tests/test_step_cost.py tests/test_radix_tree.py tests/test_quest_serving.py})
      sm=""
      if [[ " ${files[*]} " == *test_radix_tree* ]]; then
        "${debug[@]}" python3 launch.py "${zoomr[@]}" --max-total-tokens 1536 "${extra[@]}" --host 127.0.0.1 \
          --port 30013 > "$OUT/suite_small.log" 2>&1 &
        sm=$!
      fi
      [[ -n $z ]] && wait_ready 30011 $z; wait_ready 30014 $ov; wait_ready 30012 $st; [[ -n $sm ]] && wait_ready 30013 $sm
      stamp "suite servers ready (or given up)"
      if [[ -n ${PROBE:-} ]]; then
        timeout $(left 200 240) python3 scripts/exactness_probe.py --zoomr http://127.0.0.1:30014 \
          --stock http://127.0.0.1:30012 > "$OUT/probe.log" 2>&1
        echo "probe rc=$?"; cat "$OUT/probe.log" | cut -c1-400
      fi
      ZOOMR_TEST_ZOOMR_URL=$plain_url ZOOMR_TEST_STOCK_URL=http://127.0.0.1:30012 \
      ZOOMR_TEST_OVERLAP_URL=http://127.0.0.1:30014 \
      ZOOMR_TEST_SMALL_POOL_URL=http://127.0.0.1:30013 ZOOMR_TEST_SERVER_TIMEOUT=$(left 60 420) \
      ZOOMR_TEST_SERVER_ARGS="--max-total-tokens 200000 ${extra[*]}" \
        timeout $(left ${SUITE_RESERVE_S:-40} 420) python3 -m pytest -p no:cacheprovider -o addopts="" -q -rA \
        -m server "${deselect[@]}" "${files[@]}" \
        > "$OUT/suite_tests.log" 2>&1
      echo "server tests rc=$?"; grep -E "passed|failed|error" "$OUT/suite_tests.log" | tail -3
      grep -E "^(FAILED|ERROR)" "$OUT/suite_tests.log" | head -20
      kill $z $ov $st $sm 2>/dev/null; wait $z $ov $st $sm 2>/dev/null
      ;;
    capacity-launch)
      # Start the capacity servers detached and go on (e.g. with `tests`) while they come up; `capacity-start` or
      # `capacity` later waits for them.
      stamp "capacity: launching the servers"
      cap_start nowait
      ;;
    capacity-start)
      # Only start the capacity servers and wait until they are ready (4-6 minutes on a bare machine), so that the
      # next device call, while this machine is still warm, measures with `capacity`.
      stamp "capacity: starting the servers"
      cap_start; echo "capacity-start rc=$?"
      ;;
    capacity)
      # The yardstick (benchmarks/capacity.py) on Qwen3-8B with random weights, attached to the capacity servers
      # (started here first unless they answer). Pool: 4 x (256 + longest length) tokens unless
      # CAPACITY_MAX_TOTAL_TOKENS; CAPACITY_WHOLE_GPU=1: no pool cap (other ports), so each server needs the GPU to
      # itself: the servers of CAPACITY_SERVERS run one after another in this call, their JSONs merged (stock alone
      # took 378 s to be ready on a bare H200, 2026-12-02: run it on a machine an earlier call warmed, or one server
      # per call). Stops itself before the budget
      # (SIGTERM: the points measured so far are written). The servers keep running for a later call unless
      # CAPACITY_STOP=1.
      # CAPACITY_PLAN="LENGTHS:ROWS:REQUESTS:MODE ..." (MODE window or complete) runs one benchmark per entry
      # (e.g. "4096:stock,zoomr,full:16:complete 16384:stock,zoomr:32:window") and merges them into results/. An
      # entry's optional fifth field adds capacity.py flags, '+' for a space (e.g. ":--summary-tokens=16"): other engine
      # settings, so that entry is not merged (its JSON comes back in logs.tgz, cap_N/).
      plan=(${CAPACITY_PLAN:-"$CAP_LENGTHS:all:${CAPACITY_REQUESTS:-32}:window"})
      stamp "capacity: ${plan[*]}"
      # Whole GPU: each server needs the GPU to itself, so one server at a time (started, measured, stopped) unless
      # CAPACITY_ONE_BY_ONE=0; the runs are merged after. A warm machine has FlashInfer's kernels compiled in /tmp/fi.
      groups=("$CAP_SERVERS")
      if [[ ${CAPACITY_WHOLE_GPU:-0} == 1 && ${CAPACITY_ONE_BY_ONE:-1} == 1 ]]; then IFS=, read -r -a groups <<< "$CAP_SERVERS"; fi
      n=0; outs=(); cap_stem=$([[ ${CAPACITY_WHOLE_GPU:-0} == 1 ]] && echo capacity_whole_gpu || echo capacity)
      all_servers=$CAP_SERVERS
      for CAP_SERVERS in "${groups[@]}"; do
        (( ${#groups[@]} > 1 )) && { cap_stop; stamp "capacity: $CAP_SERVERS alone on the GPU"; }
        cap_start || continue
        urls=(); for i in "${!CAP_NAMES[@]}"; do
          cap_wanted "${CAP_NAMES[$i]}" && urls+=("${CAP_URL_FLAGS[$i]}" "http://127.0.0.1:$((CAP_BASE_PORT + i))")
        done
        for entry in "${plan[@]}"; do
          IFS=: read -r lengths rows requests mode entry_args <<< "$entry"
          n=$((n + 1)); out_dir=$OUT/cap_$n; [[ -z $entry_args ]] && outs+=("$out_dir/$cap_stem.json")
          rows_arg=""; [[ $rows != all ]] && rows_arg="--rows $rows"
          from=$([[ $mode == complete ]] && echo 1000000 || echo "${CAPACITY_WINDOW_FROM:-4096}")
          eval "timeout -s TERM $(left ${CAPACITY_RESERVE_S:-30}) python3 benchmarks/capacity.py $(cap_flags) \
            --lengths $lengths $rows_arg --servers $CAP_SERVERS ${urls[*]} --requests $requests \
            --whole-gpu-requests ${CAPACITY_WHOLE_GPU_REQUESTS:-128} \
            --whole-gpu-length ${CAPACITY_WHOLE_GPU_LENGTH:-16384} --window ${CAPACITY_WINDOW:-45} \
            --window-from $from ${CAPACITY_ARGS:-} ${entry_args//+/ } --out $out_dir" > "$OUT/capacity_$n.log" 2>&1
          echo "capacity $CAP_SERVERS $entry rc=$?"; tr '\r' '\n' < "$OUT/capacity_$n.log" | grep -v '^\s*$' | grep '^|' | tail -12
        done
        for f in "$CAP_DIR"/*.log; do [[ -e $f ]] && cp "$f" "$OUT/capacity_server_$(basename "$f")"; done
      done
      CAP_SERVERS=$all_servers
      existing=(); for f in "${outs[@]}"; do [[ -s $f ]] && existing+=("$f"); done
      if (( ${#existing[@]} == 1 )); then mkdir -p "$OUT/results" && cp "$(dirname "${existing[0]}")"/$cap_stem.* "$OUT/results/"
      elif (( ${#existing[@]} > 1 )); then python3 benchmarks/capacity.py --from-json "${existing[@]}" --out "$OUT/results"; fi
      [[ ${CAPACITY_STOP:-0} == 1 ]] && cap_stop
      ;;
    capacity-stop)
      cap_stop
      ;;
    jit-warm)
      # A server on the embedded reasoner, detached, only to JIT-compile FlashInfer's kernels for its shape into
      # /tmp/fi (2-4.5 minutes on a bare machine) while the phases after it run (e.g. `jit-warm train accuracy`: the
      # accuracy server on the freshly trained model, same shape, then starts in about a minute). A small pool
      # (--mem-fraction-static 0.2) leaves the GPU to training; `accuracy` stops it first.
      stamp "jit-warm: a server on the embedded reasoner (background)"
      setsid nohup python3 launch.py --enable-zoomr --max-total-tokens 100000 --mem-fraction-static 0.2 \
        --cuda-graph-max-bs ${ACCURACY_GRAPH_BS:-64} --disable-prefill-cuda-graph --host 127.0.0.1 --port 30091 \
        > "$OUT/jit_warm.log" 2>&1 < /dev/null &
      echo $! > /tmp/jit_warm.pid
      ;;
    train)
      # The embedded reasoner (reasoner/train.py): trained here, its held-out full-attention accuracy measured in
      # torch. TRAIN_VARIANTS="NAME=ARGS|NAME=ARGS..." trains several side by side on the one GPU (each with
      # TRAIN_ARGS, then its own ARGS), default one, zoomr-reasoner; TRAIN_AWARE=1 adds zoomr-reasoner-aware
      # (--zoomr-aware); TRAIN_FINETUNE="ARGS" then fine-tunes the first variant (--init) into NAME-aware, e.g.
      # "--zoomr-aware --warm 0 --minutes 2". Each checkpoint comes back as $OUT/reasoner_NAME.tgz (the device
      # returns at most 8 files of 16 MiB). Size --minutes and --eval-minutes in TRAIN_ARGS so that both fit in the budget left: the checkpoint
      # is written before the evaluation starts. Then `reasoner.view_probe` on each checkpoint (PROBE_N problems, up to
      # 120 s; leave it room): teacher-forced values under ZoomR's view and how often the zoom ranks the needed thought
      # first, into the variant's log (PROBE_ARGS: more probe flags, e.g. "--sentences --linked" for a model trained
      # with --sentence-view). Each checkpoint also stays in /tmp/trained/NAME for the call's later phases.
      stamp "train: the reasoner"
      IFS='|' read -r -a variants <<< "${TRAIN_VARIANTS:-zoomr-reasoner=}"
      [[ ${TRAIN_AWARE:-0} == 1 ]] && variants+=("zoomr-reasoner-aware=--zoomr-aware")
      pids=(); names=()
      for v in "${variants[@]}"; do
        name=${v%%=*}; vargs=${v#*=}; names+=("$name")
        timeout $(left 30) python3 -m reasoner.train --out "$OUT/$name" ${TRAIN_ARGS:-} $vargs \
          > "$OUT/train_$name.log" 2>&1 &
        pids+=($!)
      done
      for i in "${!pids[@]}"; do wait "${pids[$i]}"; echo "train ${names[$i]} rc=$?"; done
      if [[ -n ${TRAIN_FINETUNE:-} && -d $OUT/${names[0]} ]]; then
        # then a fine-tune of the first variant (e.g. "--zoomr-aware --warm 0 --minutes 2"), into NAME-aware
        name=${names[0]}-aware; names+=("$name")
        timeout $(left 30) python3 -m reasoner.train --init "$OUT/${names[0]}" --out "$OUT/$name" $TRAIN_FINETUNE \
          > "$OUT/train_$name.log" 2>&1
        echo "train $name rc=$?"
      fi
      for name in "${names[@]}"; do  # the view probe: its trace under ZoomR's view, and whether the zoom finds
        [[ -d $OUT/$name ]] && timeout $(left 20 120) python3 -m reasoner.view_probe --model "$OUT/$name" --device cuda \
          --n "${PROBE_N:-16}" --items 24 --keep 0,all ${PROBE_ARGS:-} >> "$OUT/train_$name.log" 2>&1  # the needed thought
      done
      for name in "${names[@]}"; do
        f=$OUT/train_$name.log; echo "== $name"; grep -E "^\[train\] (held-out|wrote|[0-9]+ problems)" "$f"; tail -7 "$f"
        # a later phase of this call reads it from /tmp/trained/NAME (e.g. ACCURACY_MODEL=/tmp/trained/NAME)
        [[ -d $OUT/$name ]] && mkdir -p /tmp/trained && cp -r "$OUT/$name" /tmp/trained/ \
          && tar czf "$OUT/reasoner_$name.tgz" -C "$OUT" "$name" && rm -rf "${OUT:?}/$name"
      done
      ;;
    accuracy)
      # benchmarks/accuracy.py against ACCURACY_SERVERS (default 1) ZoomR servers it starts side by side on
      # ACCURACY_MODEL (default the committed reasoner; carry only .gpu then: the model travels in the checkout), on
      # ACCURACY_N held-out problems (decode CUDA graphs up to ACCURACY_GRAPH_BS, default 64). Each server's pool is
      # capped at ACCURACY_MAX_TOKENS (default 400000; a small model's 64 requests need ~1 GB), so several share the
      # GPU; each scheduler is its own CPU core. (One server with ACCURACY_GRAPH_BS=256 and --concurrency 256 is the
      # fallback should several stall again: one server never did.) Prefill CUDA graphs off: their capture took 200 s
      # of the first server's start on a bare H200 (2026-12-03), and accuracy does not time prefill.
      # ACCURACY_SERVER_ARGS: more server flags (e.g. "--zoomr-sentence-min-tokens 4" for a model trained with
      # --sentence-view, whose sentences are cut that way).
      if [[ -s /tmp/jit_warm.pid ]]; then  # the jit-warm server has done its part (or is cut short here)
        pid=$(cat /tmp/jit_warm.pid); rm -f /tmp/jit_warm.pid
        grep -q "fired up" "$OUT/jit_warm.log" 2>/dev/null && stamp "jit-warm server was ready" || stamp "jit-warm server not ready yet"
        stop_group "$pid" 15
      fi
      stamp "accuracy: ${ACCURACY_SERVERS:-1} x ${ACCURACY_MODEL:-models/zoomr-reasoner}"
      python3 -m reasoner.tasks --split heldout --n "${ACCURACY_N:-200}" ${ACCURACY_FAMILY:+--family $ACCURACY_FAMILY} \
        ${ACCURACY_TASK_ARGS:-} --out /tmp/heldout.jsonl  # e.g. ACCURACY_TASK_ARGS="--linked" (with ACCURACY_FAMILY=chain)
      # A monitor beside it (every 5 s: host memory, GPU use, load, decode log lines so far); once every server is
      # up, every 30 s each scheduler's Python stacks into its log (the plugin's SIGUSR2), to see where a stalled
      # step waits (8 servers stopped decoding together on 2026-12-02 and -03), and the servers' logs with the
      # monitor's into $OUT/server_logs.tgz, so that a call the device cuts short still brings them back.
      rm -f /tmp/accuracy_monitor.log /tmp/zoomr-server-*.log  # the servers' logs (tests/server_process.py): none left from an earlier call
      ( while sleep 5; do
          n_up=$(grep -l "fired up" /tmp/zoomr-server-*.log 2>/dev/null | wc -l)
          echo "$(date +%T) up=$n_up mem=$(free -m | awk 'NR==2{print $3"/"$2}') load=$(cut -d' ' -f1 /proc/loadavg)" \
            "gpu=$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader | tr -d ' ')" \
            "decode_lines=$(cat /tmp/zoomr-server-*.log 2>/dev/null | grep -c 'Decode batch')" >> /tmp/accuracy_monitor.log
          if (( SECONDS % 30 < 5 )); then
            (( n_up >= ${ACCURACY_SERVERS:-1} )) && pkill -USR2 -f '^sglang::scheduler'
            (cd /tmp && tar czf "$OUT/server_logs.tgz.part" accuracy_monitor.log zoomr-server-*.log 2>/dev/null \
              && mv "$OUT/server_logs.tgz.part" "$OUT/server_logs.tgz")
          fi
        done ) &
      MON_PID=$!
      timeout -s TERM $(left 30) python3 -m benchmarks.accuracy --problems /tmp/heldout.jsonl \
        --model-path "${ACCURACY_MODEL:-models/zoomr-reasoner}" --servers "${ACCURACY_SERVERS:-1}" ${ACCURACY_ARGS:-} \
        --out "$OUT/results" -- --cuda-graph-max-bs ${ACCURACY_GRAPH_BS:-64} --max-total-tokens ${ACCURACY_MAX_TOKENS:-400000} --mem-fraction-static 0.85 \
        --enable-metrics --disable-prefill-cuda-graph --soft-watchdog-timeout 30 ${ACCURACY_SERVER_ARGS:-} > "$OUT/accuracy.log" 2>&1
      echo "accuracy rc=$?"; kill $MON_PID 2>/dev/null; cp /tmp/accuracy_monitor.log "$OUT/monitor.log"; tr '\r' '\n' < "$OUT/accuracy.log" | grep '^|' | tail -14
      rm -f "$OUT"/server_logs.tgz*; tail -4 "$OUT/monitor.log"; (dmesg 2>/dev/null | grep -i xid | tail -5) || true
      ;;
    *) stamp "unknown phase $phase"; exit 2 ;;
  esac
done
if [[ -n $LONG_PID ]]; then
  stamp "waiting for the long generations"
  wait $LONG_PID; echo "serve_long rc=$?"; tail -14 "$OUT/serve_long.log"
fi
stamp "done"
# The device returns at most 8 files: keep the results and this log loose, bundle every other log.
cd "$OUT" && mv results/*.log . 2>/dev/null
sleep 2  # let background writers settle
tar czf logs.tgz --exclude=./results --exclude=./gpu_run.log --exclude=./logs.tgz --exclude='./reasoner_*.tgz' \
  --warning=no-file-changed . \
  ; [[ -s logs.tgz ]] && find . -maxdepth 1 -type f ! -name logs.tgz ! -name gpu_run.log ! -name 'reasoner_*.tgz' -delete
