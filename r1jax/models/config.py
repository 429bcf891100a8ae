"""Model shapes: one frozen config for the Qwen2 / Qwen2.5 / Llama 3 family, and the size presets."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 `llama3` RoPE scaling (low frequencies stretched by `factor`, high ones kept)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer shape. Hashable, so it can be a static jit argument."""

    vocab_size: int
    embed_dim: int  # D (HF hidden_size)
    mlp_dim: int  # F (HF intermediate_size)
    num_layers: int  # L
    num_heads: int  # H query heads
    num_kv_heads: int  # K key/value heads (GQA: H % K == 0)
    head_dim: int  # Dh
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v, Llama does not
    tie_embeddings: bool = False  # LM head = embedding^T
    max_seq_len: int = 4096
    family: str = "qwen2"  # 'qwen2' | 'llama': which HF architecture to export as
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations and matmuls
    remat: bool = False  # recompute each block in the backward pass

    def __post_init__(self):
        for name in ("vocab_size", "embed_dim", "mlp_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name}={getattr(self, name)}: must be positive")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} is not a multiple of model.num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"model.head_dim={self.head_dim}: RoPE needs an even head dimension")
        if self.family not in ("qwen2", "llama"):
            raise ValueError(f"model.family={self.family!r}: expected 'qwen2' or 'llama'")

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        d, f, h, k, dh = self.embed_dim, self.mlp_dim, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * h * dh * 2 + d * k * dh * 2 + (h * dh + 2 * k * dh if self.qkv_bias else 0)
        block = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * block + d + head


_QWEN = dict(rms_norm_eps=1e-6, qkv_bias=True, family="qwen2")
_QWEN_1_5B = dict(embed_dim=1536, mlp_dim=8960, num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128)
_QWEN_7B = dict(embed_dim=3584, mlp_dim=18944, num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128)

PRESETS: dict[str, ModelConfig] = {
    # Trains on a 2-core laptop CPU in minutes; vocab_size is replaced by the tokenizer's.
    "tiny": ModelConfig(
        vocab_size=512, embed_dim=128, mlp_dim=384, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
        tie_embeddings=True, max_seq_len=512, **_QWEN,
    ),
    # The distillation student of the built-in default (stage 6): half the depth, 3/4 of the width of "tiny".
    "tiny-student": ModelConfig(
        vocab_size=512, embed_dim=96, mlp_dim=288, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=24,
        tie_embeddings=True, max_seq_len=512, **_QWEN,
    ),
    "qwen2.5-0.5b": ModelConfig(
        vocab_size=151936, embed_dim=896, mlp_dim=4864, num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
        rope_theta=1e6, tie_embeddings=True, max_seq_len=32768, **_QWEN,
    ),
    "qwen2.5-1.5b": ModelConfig(
        vocab_size=151936, rope_theta=1e6, tie_embeddings=True, max_seq_len=131072, **_QWEN_1_5B, **_QWEN
    ),
    "qwen2.5-3b": ModelConfig(
        vocab_size=151936, embed_dim=2048, mlp_dim=11008, num_layers=36, num_heads=16, num_kv_heads=2, head_dim=128,
        rope_theta=1e6, tie_embeddings=True, max_seq_len=32768, **_QWEN,
    ),
    "qwen2.5-7b": ModelConfig(
        vocab_size=152064, rope_theta=1e6, tie_embeddings=False, max_seq_len=131072, **_QWEN_7B, **_QWEN
    ),
    "qwen2.5-math-1.5b": ModelConfig(
        vocab_size=151936, rope_theta=1e4, tie_embeddings=True, max_seq_len=4096, **_QWEN_1_5B, **_QWEN
    ),
    "qwen2.5-math-7b": ModelConfig(
        vocab_size=152064, rope_theta=1e4, tie_embeddings=False, max_seq_len=4096, **_QWEN_7B, **_QWEN
    ),
    "llama-3.1-8b": ModelConfig(
        vocab_size=128256, embed_dim=4096, mlp_dim=14336, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
        rope_theta=500_000.0, rope_scaling=RopeScaling(), rms_norm_eps=1e-5, qkv_bias=False, tie_embeddings=False,
        max_seq_len=131072, family="llama",
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"model.preset={name!r}: unknown; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
