"""The embedded default model (zoomr_sgl.embedded_model): deterministic offline build, marker tokens, config sanity.

No server here; the server tests live in test_server.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from zoomr_sgl import embedded_model as em

MARKERS = ["<summary>", "</summary>", "<think>", "</think>"]


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return em.build(tmp_path_factory.mktemp("m") / "zoomr-tiny")


def test_two_builds_are_byte_identical(built, tmp_path):
    t0 = time.perf_counter()
    other = em.build(tmp_path / "again", force=True)
    assert time.perf_counter() - t0 < 20, "the build must stay fast"
    a, b = _digests(built), _digests(other)
    assert a == b
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", em.MANIFEST} <= set(a)


def test_build_is_idempotent_and_atomic(built):
    before = _digests(built)
    t0 = time.perf_counter()
    assert em.build(built) == built
    assert time.perf_counter() - t0 < 1.0
    assert _digests(built) == before
    assert not [p for p in built.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    manifest = json.loads((built / em.MANIFEST).read_text())
    assert manifest["recipe_hash"] == em.recipe_hash()
    assert em.is_current(built)


def test_default_path_is_in_repository():
    assert em.default_model_path() == Path(em.__file__).resolve().parent.parent / ".models" / "zoomr-tiny"


def test_markers_are_single_tokens_and_survive_decoding(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(built))
    text = "So 12 + 7 = 19.\n\n<summary>Tom has 19 apples.</summary>\n\n<think>\nWait, let me check.</think>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for m in MARKERS:
        mid = tok.convert_tokens_to_ids(m)
        assert tok(m, add_special_tokens=False)["input_ids"] == [mid]
        assert ids.count(mid) == 1
    assert tok.decode(ids, skip_special_tokens=True) == text  # markers are not special: never stripped
    assert tok.decode(ids) == text
    # any text encodes (byte level) and round-trips
    odd = "Ünïcödé ✓ 你好 \t\r\n\n\n  x"
    assert tok.decode(tok(odd, add_special_tokens=False)["input_ids"]) == odd


def test_special_tokens_and_chat_template(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(built))
    assert tok.eos_token == "<|im_end|>"
    ids = [tok.eos_token_id, tok.convert_tokens_to_ids("<summary>")]
    assert tok.decode(ids, skip_special_tokens=True) == "<summary>"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    out = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert out == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_config_sanity(built):
    cfg = json.loads((built / "config.json").read_text())
    gen = json.loads((built / "generation_config.json").read_text())
    tok = json.loads((built / "tokenizer.json").read_text())
    vocab = len(tok["model"]["vocab"])
    assert cfg["architectures"] == ["Qwen3ForCausalLM"] and cfg["model_type"] == "qwen3"
    assert cfg["vocab_size"] == vocab and 1000 <= vocab <= 4096
    assert cfg["max_position_embeddings"] >= 32768
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # GQA
    assert cfg["torch_dtype"] == "float32"
    eos = tok["model"]["vocab"]["<|im_end|>"]
    assert eos in gen["eos_token_id"] and cfg["eos_token_id"] == eos
    from safetensors import safe_open

    with safe_open(str(built / "model.safetensors"), "np") as f:
        names = set(f.keys())
        assert f.get_tensor("model.embed_tokens.weight").shape == (vocab, cfg["hidden_size"])
        assert f.get_tensor("lm_head.weight").shape == (vocab, cfg["hidden_size"])
    assert len([n for n in names if n.startswith("model.layers.")]) == 11 * cfg["num_hidden_layers"]


def test_cli_path(capsys):
    assert em.main(["path"]) == 0
    assert capsys.readouterr().out.strip() == str(em.default_model_path())
