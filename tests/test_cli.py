"""The `kimi-k2` command line: a fast `--help` (no torch import), the command table agreeing with the modules, and
`generate` rendering the chat template by default on a chat model (`--raw` for a plain completion)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from kimi_k2.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_help_imports_neither_torch_nor_any_command():
    code = ("import sys; from kimi_k2.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'numpy', 'kimi_k2.engine', 'kimi_k2.server', 'kimi_k2.train') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    for name in COMMANDS:
        assert name in out.stdout


def test_command_table_matches_what_the_modules_register():
    parser = build_parser()  # every module registers its commands
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    registered = {action.dest: action.help for action in sub._choices_actions}
    assert registered == {name: help_text for name, (_, help_text) in COMMANDS.items()}


def test_unknown_command_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


@pytest.fixture()
def fed_prompts(monkeypatch) -> list:
    """The prompt each `LLM.stream` call receives (the model still runs: the built-in nano model, 3 tokens)."""
    from kimi_k2.engine.llm import LLM

    seen: list = []
    original = LLM.stream

    def recording(self, prompts, params=None):
        seen.append((self, prompts, params))
        return original(self, prompts, params)

    monkeypatch.setattr(LLM, "stream", recording)
    return seen


def test_generate_renders_the_chat_template_by_default_and_raw_on_request(fed_prompts, capsys):
    common = ["generate", "--prompt", "Hello", "--max-tokens", "3", "--temperature", "0"]
    assert main(common) == 0
    llm, prompt, params = fed_prompts[-1]
    assert llm.tokenizer.has_own_chat_template  # the nano model ships the official template
    assert prompt == llm.encode_chat([{"role": "user", "content": "Hello"}])
    assert params.max_tokens == 3 and params.greedy
    assert main([*common, "--system", "Be brief."]) == 0
    assert fed_prompts[-1][1] == llm.encode_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    assert main([*common, "--raw"]) == 0
    assert fed_prompts[-1][1] == "Hello"
    calls = len(fed_prompts)
    assert main([*common, "--raw", "--system", "ignored?"]) == 1  # not silently dropped
    assert "--system needs the chat template" in capsys.readouterr().err and len(fed_prompts) == calls


def test_generate_reports_bad_sampling_values_by_option_before_loading(fed_prompts, capsys):
    assert main(["generate", "--prompt", "x", "--top-p", "2", "--model", "/nonexistent"]) == 1
    assert "--top-p 2.0: must be in (0, 1]" in capsys.readouterr().err  # not a missing-model error: checked first
    assert main(["generate", "--prompt-ids", "1,2", "--chat"]) == 1
    assert "--chat needs --prompt text" in capsys.readouterr().err
    assert not fed_prompts
