"""Hub ids wherever a checkpoint directory is accepted: resolved through the local Hugging Face cache only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kimi_k2.assets import default_model_dir
from kimi_k2.cli import main
from kimi_k2.config import resolve_config
from kimi_k2.hub import looks_like_hub_id, resolve_checkpoint


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    """A Hugging Face cache holding the nano model as `test-org/nano-k2` (the layout `hf download` writes)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--test-org--nano-k2"
    shutil.copytree(default_model_dir(), repo / "snapshots" / "c0ffee")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_ids_resolve_to_the_cached_snapshot(hub_cache):
    snapshot = hub_cache / "models--test-org--nano-k2" / "snapshots" / "c0ffee"
    assert resolve_checkpoint("test-org/nano-k2") == snapshot
    assert resolve_config("test-org/nano-k2") == resolve_config(str(default_model_dir()))
    from kimi_k2.engine.llm import LLM

    llm = LLM("test-org/nano-k2", num_kv_blocks=16)
    assert llm.tokenizer is not None and llm.config.vocab_size == resolve_config(str(snapshot)).vocab_size
    assert main(["info", "test-org/nano-k2"]) == 0
    assert main(["verify", "test-org/nano-k2"]) == 0


def test_an_uncached_hub_id_says_where_it_looked_and_downloads_nothing(hub_cache):
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint("moonshotai/Kimi-K2-Instruct", "--model")
    message = str(info.value)
    assert message.startswith("--model moonshotai/Kimi-K2-Instruct: no such directory, and not in the Hugging Face cache")
    assert str(hub_cache) in message and "hf download moonshotai/Kimi-K2-Instruct" in message
    assert not (hub_cache / "models--moonshotai--Kimi-K2-Instruct").exists()


def test_paths_win_over_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not looks_like_hub_id("org/name") and resolve_checkpoint("org/name") == Path("org/name")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        resolve_checkpoint("file")
    with pytest.raises(FileNotFoundError, match="^model ./missing: no such directory$"):
        resolve_checkpoint("./missing")
    assert looks_like_hub_id("moonshotai/Kimi-K2-Instruct") and not looks_like_hub_id("/abs/path")
