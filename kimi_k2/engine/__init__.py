"""The inference engine: paged latent KV cache, continuous batching, prefix caching, sampling, streaming.

`sequence`, `block_manager`, `scheduler` and `sampling_params` are pure Python (no torch); `paged_cache`,
`model_runner`, `sampler` and `core` run the model; `llm` (`LLM`) and `async_engine` (`AsyncLLM`) are the
facades; `cli` adds `kimi-k2 generate` and `kimi-k2 chat`. See docs/engine.md.
"""
