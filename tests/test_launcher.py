"""launch.py's own flags: platform defaults, the user's flags win, and every bad ZoomR flag is one line + exit 2."""

import json
import subprocess
import sys

import pytest

from tests.server_process import REPO
from zoomr_sgl.config import ENV_VAR, ZoomRConfig
from zoomr_sgl.launcher import LaunchError, host_store_refusal, model_refusal, plan_launch


def test_cpu_plan_adds_cpu_settings_and_default_model():
    plan = plan_launch(["--enable-zoomr", "--zoomr-zoom-budget", "128"], cuda_available=False, default_model="M")
    argv = plan.sglang_argv
    assert argv[:4] == ["--model-path", "M", "--dtype", "float32"]
    for flag in ("--device", "--attention-backend", "--disable-overlap-schedule", "--max-total-tokens"):
        assert flag in argv
    assert plan.env["SGLANG_USE_CPU_ENGINE"] == "1"
    assert ZoomRConfig.from_env({ENV_VAR: plan.env[ENV_VAR]}).zoom_budget == 128


def test_user_flags_come_last_and_win():
    plan = plan_launch(["--model-path", "X", "--max-total-tokens", "4096"], cuda_available=False, default_model="M")
    argv = plan.sglang_argv
    assert "M" not in argv
    assert argv[-4:] == ["--model-path", "X", "--max-total-tokens", "4096"]


def test_cuda_plan_uses_flashinfer_and_no_cpu_engine():
    plan = plan_launch(["--model-path", "X"], cuda_available=True, default_model=None)
    assert plan.sglang_argv[:2] == ["--attention-backend", "flashinfer"]
    assert "SGLANG_USE_CPU_ENGINE" not in plan.env
    embedded = plan_launch(["--enable-zoomr"], cuda_available=True, default_model="M").sglang_argv
    assert embedded[:4] == ["--model-path", "M", "--dtype", "bfloat16"]  # FlashInfer takes 16-bit inputs


def test_without_enable_zoomr_the_plugin_gets_no_config():
    plan = plan_launch([], cuda_available=False, default_model="M")
    assert plan.env[ENV_VAR] is None and plan.zoomr is None


BAD_FLAGS = [
    (["--zoomr-zoom-budget", "0"], "zoom_budget must be positive"),
    (["--zoomr-zoom-budget", "-1"], "zoom_budget must be positive"),
    (["--zoomr-zoom-topk", "0"], "zoom_topk must be positive"),
    (["--zoomr-zoom-interval", "0"], "zoom_interval must be positive"),
    (["--zoomr-host-store-tokens", "-8"], "host_store_tokens must be zero or more"),
    (["--zoomr-max-summary-tokens", "0"], "max_summary_tokens must be positive"),
    (["--zoomr-policy", "oracle"], "policy must be one of"),
    (["--zoomr-summary-open", ""], "markers must not be empty"),
    (["--zoomr-summary-close", " "], "markers must not be empty"),
    (["--zoomr-summary-open", "<s>", "--zoomr-summary-close", "<s>"], "markers must differ"),
    (["--zoomr-min-thought-tokens", "100", "--zoomr-max-thought-tokens", "50"], "exceeds max_thought_tokens"),
    (["--zoomr-zoom-budget", "lots"], "invalid int value"),
    (["--zoomr-unknown", "1"], "unknown ZoomR flag"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS)
def test_plan_rejects_bad_flags(flags, message):
    with pytest.raises(LaunchError, match=message):
        plan_launch(["--enable-zoomr", *flags], cuda_available=False, default_model="M")


def test_zoomr_flags_without_enable_are_an_error():
    with pytest.raises(LaunchError, match="needs --enable-zoomr"):
        plan_launch(["--zoomr-zoom-budget", "64"], cuda_available=False, default_model="M")


@pytest.mark.parametrize("flags, message", BAD_FLAGS)
def test_launch_py_exits_2_with_one_line(flags, message):
    r = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), "--enable-zoomr", *flags],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch.py: error:") and message in lines[0], r.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--enable-mixed-chunk"], "cannot be used with --enable-zoomr"),
        (["--speculative-algorithm", "EAGLE"], "cannot be used with --enable-zoomr"),
        (["--page-size", "16"], "needs --page-size 1"),
        (["--zoomr-policy", "quest", "--zoomr-quest-page-size", "4096"], "exceeds zoom_budget"),
        (["--attention-backend", "triton"], "would attend holes"),
        (["--attention-backend=fa3"], "would attend holes"),
        (["--decode-attention-backend", "flashinfer"], "one attention backend"),
        (["--prefill-attention-backend", "triton"], "one attention backend"),
        (["--pp-size", "2"], "every layer"),
        (["--pipeline-parallel-size=2"], "every layer"),
        (["--enable-dp-attention"], "data parallel inside the TP group"),
    ],
)
def test_zoomr_rejects_incompatible_sglang_settings(flags, message):
    with pytest.raises(LaunchError, match=message):
        plan_launch(["--enable-zoomr", *flags], cuda_available=True, default_model="M")


def test_zoomr_on_cuda_keeps_the_overlap_scheduler_on():
    argv = plan_launch(["--enable-zoomr"], cuda_available=True, default_model="M").sglang_argv
    assert "--disable-overlap-schedule" not in argv and argv[argv.index("--page-size") + 1] == "1"
    argv = plan_launch(["--enable-zoomr", "--disable-overlap-schedule"], cuda_available=True, default_model="M")
    assert argv.sglang_argv.count("--disable-overlap-schedule") == 1  # the user's choice


def test_enable_overlap_schedule_drops_the_cpu_default():
    for zoomr in ([], ["--enable-zoomr"]):
        argv = plan_launch([*zoomr, "--enable-overlap-schedule"], cuda_available=False, default_model="M").sglang_argv
        assert "--disable-overlap-schedule" not in argv and "--enable-overlap-schedule" not in argv
    assert "--disable-overlap-schedule" in plan_launch(["--enable-zoomr"], cuda_available=False,
                                                       default_model="M").sglang_argv
    with pytest.raises(LaunchError, match="contradicts"):
        plan_launch(["--enable-overlap-schedule", "--disable-overlap-schedule"], cuda_available=False,
                    default_model="M")


def test_zoomr_selects_the_zoomr_radix_tree_unless_the_user_names_one():
    argv = plan_launch(["--enable-zoomr"], cuda_available=False, default_model="M").sglang_argv
    assert argv[argv.index("--radix-cache-backend") + 1] == "zoomr"
    argv = plan_launch(["--enable-zoomr", "--radix-cache-backend", "other"], cuda_available=False,
                       default_model="M").sglang_argv
    assert argv.count("--radix-cache-backend") == 1 and argv[argv.index("--radix-cache-backend") + 1] == "other"
    assert "--radix-cache-backend" not in plan_launch([], cuda_available=False, default_model="M").sglang_argv


WINDOWED_OR_ENCODER = [
    ({"architectures": ["GptOssForCausalLM"], "sliding_window": 128}, "sliding-window attention layers"),
    ({"architectures": ["Qwen3ForCausalLM"], "is_hybrid_swa": True}, "sliding-window attention layers"),
    ({"architectures": ["Llama4ForConditionalGeneration"], "text_config": {"attention_chunk_size": 8192}},
     "sliding-window attention layers"),
    ({"architectures": ["LlamaForCausalLM"], "attention_chunk_size": 8192}, "chunked local attention"),
    ({"architectures": ["WhisperForConditionalGeneration"]}, "encoder-decoder"),
]


@pytest.mark.parametrize("config, message", WINDOWED_OR_ENCODER)
def test_models_zoomr_would_serve_wrongly_are_refused_with_one_line(tmp_path, config, message):
    """SGLang attends a window of some layers (or an encoder) for these: holes ZoomR leaves there would be read.
    The launcher reads a local model folder's config.json with SGLang's own tests; the scheduler checks the same for
    any model source at start."""
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_refusal(str(tmp_path)) is not None and message in model_refusal(str(tmp_path))
    r = subprocess.run([sys.executable, str(REPO / "launch.py"), "--enable-zoomr", "--model-path", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr[-2000:]
    assert lines[0].startswith("launch.py: error: --enable-zoomr cannot serve this model")


def test_plain_decoder_models_are_not_refused(tmp_path):
    for config in ({"architectures": ["Qwen3ForCausalLM"], "sliding_window": None, "use_sliding_window": False},
                   {"architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 36, "head_dim": 128},  # Qwen3-8B's
                   {"architectures": ["LlamaForCausalLM"]}):
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert model_refusal(str(tmp_path)) is None, config
    assert model_refusal(str(tmp_path / "missing")) is None  # a hub id or no config: the scheduler checks at start


QWEN3_8B = {"architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 36, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "hidden_size": 4096, "torch_dtype": "bfloat16"}


def test_a_host_store_larger_than_the_host_is_refused_with_its_size(tmp_path):
    """On an H200 host (125 GiB) a 524,288-token store for Qwen3-8B is 72 GiB; twice that cannot be locked."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_8B))
    gib = 2**30
    assert host_store_refusal(str(tmp_path), 524_288, [], 125 * gib) is None  # 144 KiB a token: 72 GiB
    why = host_store_refusal(str(tmp_path), 1_048_576, [], 125 * gib)
    assert why is not None and "144.0 GiB" in why and "144 KiB a token" in why and "at most 819200 tokens" in why
    assert host_store_refusal(str(tmp_path), 1_048_576, ["--kv-cache-dtype", "fp8_e4m3"], 125 * gib) is None
    assert host_store_refusal(str(tmp_path), 524_288, ["--tp-size", "16"], 125 * gib) is not None  # 1 head a rank
    assert host_store_refusal(str(tmp_path / "missing"), 10**9, [], gib) is None  # a hub id: nothing to size from
    r = subprocess.run([sys.executable, str(REPO / "launch.py"), "--enable-zoomr", "--model-path", str(tmp_path),
                        "--zoomr-host-store-tokens", str(10**9)], capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("launch.py: error: --zoomr-host-store-tokens 1000000000 needs"), lines
