"""A Qwen3 decoder in plain torch, for training: the architecture SGLang serves as ``Qwen3ForCausalLM``, with the
HuggingFace parameter names, so a trained ``state_dict`` is a servable checkpoint as it stands.

Contract:
- ``Qwen3Config`` holds the shape; ``hf_config(cfg, eos_id, pad_id)`` is the ``config.json`` SGLang reads.
- ``Qwen3(cfg)(ids, positions=None, cache=None)`` returns logits ``[B, S, V]`` (float32). Per layer: RMSNorm, q/k/v
  projections without bias, per-head RMSNorm of q and k (``q_norm``/``k_norm``) before rotary embeddings (neox
  layout, ``rope_theta``), grouped-query attention with scale ``head_dim ** -0.5``, ``o_proj``; RMSNorm, SwiGLU MLP.
  Without a cache the attention is causal over ``ids`` (right padding is harmless: no real token sees a later pad),
  or follows ``mask`` (bool ``[B, 1, S, S]``, True: may attend) when given.
- ``KVCache``: a preallocated per-layer cache for greedy decoding of a batch whose prompts are left-padded;
  ``valid[b, j]`` says which cache positions of row ``b`` hold real tokens (pads are never attended) and
  ``positions`` are per-row rotary positions (a row's first real token is position 0). The caller marks the
  positions it feeds in ``valid`` before the forward.
- ``captured_qk(model, attns, ids, mask)``: the post-RoPE queries and keys of the ``Attention`` modules ``attns``
  (lists, one ``(q, k)`` per module) from one forward of ``ids`` under ``mask``; the modules keep nothing after.
  ``forward_qk`` is the same forward with its logits first.
- ``tests/test_reasoner.py`` checks the logits against ``transformers``' own ``Qwen3ForCausalLM`` on the same weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int
    hidden_size: int = 256
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 40960

    def to_dict(self) -> dict:
        return asdict(self)


def hf_config(cfg: Qwen3Config, eos_id: int, pad_id: int, dtype: str = "bfloat16") -> dict:
    """The ``config.json`` of a checkpoint of this model (untied embeddings, no sliding window)."""
    L = cfg.num_hidden_layers
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": pad_id,
        "head_dim": cfg.head_dim, "hidden_act": "silu", "hidden_size": cfg.hidden_size, "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size, "layer_types": ["full_attention"] * L,
        "max_position_embeddings": cfg.max_position_embeddings, "max_window_layers": L,
        "num_attention_heads": cfg.num_attention_heads, "num_hidden_layers": L,
        "num_key_value_heads": cfg.num_key_value_heads, "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"}, "rope_theta": cfg.rope_theta,
        "sliding_window": None, "use_sliding_window": False, "tie_word_embeddings": False, "dtype": dtype,
        "torch_dtype": dtype, "use_cache": True, "vocab_size": cfg.vocab_size, "transformers_version": "5.12.1",
    }


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * h).to(x.dtype)


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x ``[B, H, S, D]``, positions ``[B, S]`` -> x rotated (neox layout: the two halves of D pair up)."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    ang = positions.float()[:, None, :, None] * inv  # [B, 1, S, D/2]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    xf = x.float()
    half = torch.cat([-xf[..., d // 2:], xf[..., : d // 2]], -1)
    return (xf * cos + half * sin).to(x.dtype)


class KVCache:
    """Per-layer keys and values ``[B, Hkv, T, D]`` for greedy decoding; ``valid`` ``[B, T]`` marks real tokens."""

    def __init__(self, cfg: Qwen3Config, batch: int, capacity: int, device, dtype):
        shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.length = 0  # cache positions written so far (the same for every row)


class Attention(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.cfg = cfg
        self.q_proj = nn.Linear(h, cfg.num_attention_heads * d, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_key_value_heads * d, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_key_value_heads * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * d, h, bias=False)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.keep_qk, self.qk = False, None

    def forward(self, x, positions, cache: KVCache | None, layer: int, mask: torch.Tensor | None = None):
        B, S, _ = x.shape
        c = self.cfg
        q = self.q_norm(self.q_proj(x).view(B, S, c.num_attention_heads, c.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, S, c.num_key_value_heads, c.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, S, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        q, k = rotary(q, positions, c.rope_theta), rotary(k, positions, c.rope_theta)
        if self.keep_qk:  # the zoom loss reads this layer's post-RoPE queries and keys (reasoner.zoom_loss)
            self.qk = (q, k)
        group = c.num_attention_heads // c.num_key_value_heads
        if cache is None:
            out = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                                 is_causal=mask is None, attn_mask=mask)
        else:
            t0 = cache.length
            cache.k[layer][:, :, t0:t0 + S] = k
            cache.v[layer][:, :, t0:t0 + S] = v
            keys, vals = cache.k[layer][:, :, : t0 + S], cache.v[layer][:, :, : t0 + S]
            causal = torch.ones(S, t0 + S, dtype=torch.bool, device=x.device).tril(t0)
            own = torch.arange(t0 + S, device=x.device)[None, :] == t0 + torch.arange(S, device=x.device)[:, None]
            # a pad query sees only itself (finite output, never read); a real one every real key up to itself
            mask = (causal[None, None] & cache.valid[:, None, None, : t0 + S]) | own[None, None]
            out = F.scaled_dot_product_attention(q, keys.repeat_interleave(group, 1), vals.repeat_interleave(group, 1),
                                                 attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


class MLP(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, positions, cache, layer, mask=None):
        x = x + self.self_attn(self.input_layernorm(x), positions, cache, layer, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen3(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def init_weights(self, generator: torch.Generator) -> None:
        """Seeded init: normal(0, 0.02) for matrices and embeddings, output projections scaled by depth."""
        scale = 0.02 / (2 * self.cfg.num_hidden_layers) ** 0.5
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                std = scale if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=generator) * std)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None,
                mask: torch.Tensor | None = None):
        if positions is None:
            positions = torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
        x = self.model.embed_tokens(ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, positions, cache, i, mask)
        if cache is not None:
            cache.length += ids.shape[1]
        return self.lm_head(self.model.norm(x)).float()


def captured_qk(model: Qwen3, attns: list, ids: torch.Tensor, mask: torch.Tensor) -> tuple[list, list]:
    return forward_qk(model, attns, ids, mask)[1:]


def forward_qk(model: Qwen3, attns: list, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list, list]:
    """One forward: its logits, and the post-RoPE queries and keys of the attention modules ``attns``."""
    for attn in attns:
        attn.keep_qk = True
    try:
        logits = model(ids, mask=mask)
        return logits, [a.qk[0] for a in attns], [a.qk[1] for a in attns]
    finally:
        for attn in attns:  # the captured tensors live only until the caller has them
            attn.keep_qk, attn.qk = False, None
