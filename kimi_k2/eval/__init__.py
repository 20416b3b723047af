"""Evaluation of any OpenAI-compatible K2 endpoint over HTTP — this project's server or a vendor's.

HTTP client only (httpx): nothing here imports the engine, so the same code measures every endpoint the same
way. `suite` loads the shipped, versioned tool-use cases (`suites/tools-v1`), `checks` scores one response,
`tools` runs the suite (`kimi-k2 eval tools`), `reproduce` checks seeded outputs alone and in company
(`kimi-k2 eval reproduce`), `report` formats tables and compares two runs (`kimi-k2 eval compare`).
"""
