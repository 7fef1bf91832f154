"""The embedded bigram model's weights: computed, not trained, from its corpus's bigram statistics.

Contract:
- ``bigram_logits(ids_per_doc, vocab, smoothing) -> (logits, unigram)``: the centred log P(b | a) over the documents
  laid back to back, interpolated with the unigram distribution (a row never seen falls back to it).
- ``weights(logits, params) -> {name: float32 array}``: a ``Qwen3ForCausalLM`` state dict whose embedding and LM head
  are a rank-``hidden_size`` fit of ``logits`` (so with the layers adding nothing the model is the bigram model) and
  whose attention and MLP weights are seeded random, scaled by ``params`` so that which positions are attended
  changes the output. Every weight is snapped to a grid of ``2**-weight_grid_bits`` (robust against BLAS rounding);
  the same inputs give the same bytes when the caller runs BLAS single-threaded (``embedded_model.build`` does).
- ``model_config(vocab, eos_ids, pad_id, params) -> dict``: its ``config.json`` (float32, full attention).
- ``write_safetensors(path, tensors)``: a deterministic float32 safetensors file (sorted keys, fixed metadata).
"""

from __future__ import annotations

import json
from pathlib import Path



def bigram_logits(ids_per_doc: list[list[int]], vocab: int, smoothing: float):
    """Centred log P(b | a), interpolated with the unigram distribution (rows never seen fall back to it)."""
    import numpy as np

    stream = np.asarray([i for ids in ids_per_doc for i in ids], dtype=np.int64)  # documents back to back
    counts = np.zeros((vocab, vocab), dtype=np.float64)
    np.add.at(counts, (stream[:-1], stream[1:]), 1.0)
    uni = (np.bincount(stream, minlength=vocab).astype(np.float64) + 0.5) / (len(stream) + 0.5 * vocab)
    k = smoothing
    probs = (counts + k * uni[None, :]) / (counts.sum(axis=1, keepdims=True) + k)
    logp = np.log(probs)
    return logp - logp.mean(axis=1, keepdims=True), uni


def _snap(x, bits: int):
    import numpy as np

    q = float(2**bits)
    return (np.round(np.asarray(x, dtype=np.float64) * q) / q).astype(np.float32)


def _orth(y):
    """Orthonormal basis of y's columns, with the sign convention diag(R) > 0 (a continuous function of y)."""
    import numpy as np

    q, r = np.linalg.qr(y)
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]


def weights(logits, p: dict) -> dict:
    """State dict (numpy float32) for Qwen3ForCausalLM."""
    import numpy as np

    vocab = logits.shape[0]
    d, L = p["hidden_size"], p["num_hidden_layers"]
    nh, nkv, hd, inter = p["num_attention_heads"], p["num_key_value_heads"], p["head_dim"], p["intermediate_size"]
    rng = np.random.Generator(np.random.PCG64(p["seed"]))

    # Rank-d fit of the centred log-bigram matrix (truncated SVD): logits[a] ~= emb[a] @ head.T. Signs are made
    # canonical; the bytes are reproducible because the build runs with single-threaded BLAS (see build()).
    u, s, vt = np.linalg.svd(logits, full_matrices=False)
    u, s, vt = u[:, :d], s[:d], vt[:d]
    flip = np.where(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])] < 0, -1.0, 1.0)
    u, vt = u * flip[None, :], vt * flip[:, None]
    emb, head = u * np.sqrt(s), vt.T * np.sqrt(s)
    rms = np.sqrt((emb**2).mean(axis=1, keepdims=True)) + 1e-12
    head = head * float(np.median(rms)) * p["logit_scale"]
    emb = emb / rms  # unit RMS rows: what the final RMSNorm sees when the layers add nothing
    rot = _orth(rng.standard_normal((d, d)))  # spread the bigram directions over all dims (keeps the fit exact)
    emb, head = emb @ rot, head @ rot

    g = p["weight_grid_bits"]
    sd = {
        "model.embed_tokens.weight": _snap(emb, g),
        "lm_head.weight": _snap(head, g),
        "model.norm.weight": _snap(np.ones(d), g),
    }
    for i in range(L):
        pre = f"model.layers.{i}."
        sd[pre + "input_layernorm.weight"] = _snap(np.ones(d), g)
        sd[pre + "post_attention_layernorm.weight"] = _snap(np.ones(d), g)
        sd[pre + "self_attn.q_proj.weight"] = _snap(rng.standard_normal((nh * hd, d)) / np.sqrt(d), g)
        sd[pre + "self_attn.k_proj.weight"] = _snap(rng.standard_normal((nkv * hd, d)) / np.sqrt(d), g)
        sd[pre + "self_attn.v_proj.weight"] = _snap(rng.standard_normal((nkv * hd, d)) / np.sqrt(d), g)
        sd[pre + "self_attn.o_proj.weight"] = _snap(
            rng.standard_normal((d, nh * hd)) / np.sqrt(nh * hd) * p["attn_out_scale"], g
        )
        sd[pre + "self_attn.q_norm.weight"] = _snap(np.full(hd, p["qk_norm_scale"]), g)
        sd[pre + "self_attn.k_norm.weight"] = _snap(np.full(hd, p["qk_norm_scale"]), g)
        sd[pre + "mlp.gate_proj.weight"] = _snap(rng.standard_normal((inter, d)) / np.sqrt(d), g)
        sd[pre + "mlp.up_proj.weight"] = _snap(rng.standard_normal((inter, d)) / np.sqrt(d), g)
        sd[pre + "mlp.down_proj.weight"] = _snap(
            rng.standard_normal((d, inter)) / np.sqrt(inter) * p["mlp_out_scale"] * 2.0, g
        )
    return sd


def model_config(vocab: int, eos_ids: list[int], pad_id: int, p: dict) -> dict:
    L = p["num_hidden_layers"]
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": None,
        "dtype": "float32",
        "eos_token_id": eos_ids[0],
        "head_dim": p["head_dim"],
        "hidden_act": "silu",
        "hidden_size": p["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": p["intermediate_size"],
        "layer_types": ["full_attention"] * L,
        "max_position_embeddings": p["max_position_embeddings"],
        "max_window_layers": L,
        "model_type": "qwen3",
        "num_attention_heads": p["num_attention_heads"],
        "num_hidden_layers": L,
        "num_key_value_heads": p["num_key_value_heads"],
        "pad_token_id": pad_id,
        "rms_norm_eps": p["rms_norm_eps"],
        "rope_parameters": {"rope_theta": p["rope_theta"], "rope_type": "default"},
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "5.12.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab,
    }


def write_safetensors(path: Path, tensors: dict) -> None:
    """Deterministic safetensors writer (sorted keys, fixed metadata), no torch needed."""
    import numpy as np

    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype="<f4")
        raw = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for raw in blobs:
            f.write(raw)
