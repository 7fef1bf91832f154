#!/usr/bin/env bash
# One device call on the H100: unpack the SGLang runtime, then the phases asked for (GPU tests, kernel benchmark,
# launch.py --enable-zoomr on the embedded model, Qwen3-8B long generations, the server tests), logged under $OUT.
#
#   here (CPU host), once:  scripts/gpu_run.sh --prepare     # fills .gpu/ (runtime archive, pure-python test deps)
#   on the device:          bash scripts/gpu_run.sh [long] [tests] [bench] [e2e] [suite]
#                           (default: tests bench e2e; long runs in the background beside the later phases)
#                           writes $OUT/results/{kernels,serve_long}.{json,md,png}, $OUT/gpu_run.log, $OUT/logs.tgz
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

for phase in "${PHASES[@]}"; do
  case $phase in
    tests)
      stamp "GPU tests"
      timeout $(left 60 300) python3 -m pytest -m gpu -p no:cacheprovider -o addopts="" -q -rA \
        tests/test_kernels.py tests/test_flashinfer_resident.py --junitxml="$OUT/gpu_tests.xml" \
        > "$OUT/gpu_tests.log" 2>&1
      echo "pytest rc=$?" | tee -a "$OUT/gpu_tests.log"; tail -5 "$OUT/gpu_tests.log"
      ;;
    bench)
      stamp "kernel benchmark"
      timeout $(left 30 400) python3 benchmarks/bench_kernels.py --out "$OUT/results" > "$OUT/bench.log" 2>&1
      echo "bench rc=$?" | tee -a "$OUT/bench.log"; tail -15 "$OUT/bench.log"
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
      # The server tests (exactness against stock, offload + recall, radix reuse over holed prefixes, demotion)
      # against the embedded model on FlashInfer with decode CUDA graphs. The fixtures attach to servers started
      # here with the flags they would use: ZoomR and stock with default graphs, and the radix tests' small pool.
      stamp "server tests on the GPU"
      zoomr=(--enable-zoomr --zoomr-zoom-budget 512 --zoomr-zoom-topk 3 --enable-metrics ${SUITE_SERVER_FLAGS:-})
      extra=(--cuda-graph-max-bs 16 --disable-prefill-cuda-graph)
      python3 launch.py "${zoomr[@]}" --max-total-tokens 200000 --host 127.0.0.1 --port 30011 \
        > "$OUT/suite_zoomr.log" 2>&1 &
      z=$!
      python3 launch.py --max-total-tokens 200000 ${SUITE_SERVER_FLAGS:-} --host 127.0.0.1 --port 30012 \
        > "$OUT/suite_stock.log" 2>&1 &
      st=$!
      files=(${SUITE_FILES:-tests/test_resident_attention.py tests/test_zoomr_serving.py tests/test_radix_tree.py})
      sm=""
      if [[ " ${files[*]} " == *test_radix_tree* ]]; then
        python3 launch.py "${zoomr[@]}" --max-total-tokens 1536 "${extra[@]}" --host 127.0.0.1 --port 30013 \
          > "$OUT/suite_small.log" 2>&1 &
        sm=$!
      fi
      wait_ready 30011 $z; wait_ready 30012 $st; [[ -n $sm ]] && wait_ready 30013 $sm
      stamp "suite servers ready (or given up)"
      if [[ -n ${PROBE:-} ]]; then
        timeout $(left 200 240) python3 scripts/exactness_probe.py --zoomr http://127.0.0.1:30011 \
          --stock http://127.0.0.1:30012 > "$OUT/probe.log" 2>&1
        echo "probe rc=$?"; cat "$OUT/probe.log" | cut -c1-400
      fi
      ZOOMR_TEST_ZOOMR_URL=http://127.0.0.1:30011 ZOOMR_TEST_STOCK_URL=http://127.0.0.1:30012 \
      ZOOMR_TEST_SMALL_POOL_URL=http://127.0.0.1:30013 ZOOMR_TEST_SERVER_TIMEOUT=$(left 60 420) \
      ZOOMR_TEST_SERVER_ARGS="--max-total-tokens 200000 ${extra[*]}" \
        timeout $(left 40 420) python3 -m pytest -p no:cacheprovider -o addopts="" -q -rA \
        -m server "${files[@]}" \
        > "$OUT/suite_tests.log" 2>&1
      echo "server tests rc=$?"; grep -E "passed|failed|error" "$OUT/suite_tests.log" | tail -3
      kill $z $st $sm 2>/dev/null; wait $z $st $sm 2>/dev/null
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
tar czf logs.tgz --exclude=./results --exclude=./gpu_run.log --exclude=./logs.tgz --warning=no-file-changed . \
  ; [[ -s logs.tgz ]] && find . -maxdepth 1 -type f ! -name logs.tgz ! -name gpu_run.log -delete
