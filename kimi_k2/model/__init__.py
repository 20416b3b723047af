"""The K2 network: pure math on tensors, no files and no text."""

from kimi_k2.model.cache import ContiguousLatentCache
from kimi_k2.model.transformer import ForwardStats, KimiK2ForCausalLM, build_model, random_model

__all__ = ["ContiguousLatentCache", "ForwardStats", "KimiK2ForCausalLM", "build_model", "random_model"]
