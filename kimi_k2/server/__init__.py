"""The HTTP server: OpenAI- and Anthropic-compatible APIs over the engine (`kimi-k2 serve --model DIR`).

`app.create_app(app.server_state(AsyncLLM(LLM(dir)), name))` builds the ASGI app; `cli.py` is the `serve`
command; `background.BackgroundServer` runs it in a thread (tests, benchmarks). See docs/server.md.
"""
