"""Qwen2 / Qwen2.5 / Llama 3 transformer, size presets, and Hugging Face checkpoint interop."""

from r1jax.models.config import PRESETS, ModelConfig, RopeScaling, get_preset
from r1jax.models.hf_io import CheckpointError, config_from_hf, config_to_hf, load_hf_checkpoint, save_hf_checkpoint
from r1jax.models.transformer import KVCache, Transformer, compute_logits, init_model

__all__ = [
    "PRESETS", "CheckpointError", "KVCache", "ModelConfig", "RopeScaling", "Transformer", "compute_logits",
    "config_from_hf", "config_to_hf", "get_preset", "init_model", "load_hf_checkpoint", "save_hf_checkpoint",
]
