"""ModelConfig: the official configs load unchanged, presets are exact, validation names the field."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kimi_k2.cli import main
from kimi_k2.config import ModelConfig, preset
from kimi_k2.planner.params import attention_params, count_params, expert_params, router_params

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "kimi_k2_reference"
CONFIGS = Path(__file__).resolve().parent / "configs"
K2_CONFIG = CONFIGS / "kimi-k2-instruct.json"  # the official Kimi-K2-Instruct config.json, checked in


def official_k2() -> dict:
    return json.loads(K2_CONFIG.read_text())


def test_checked_in_k2_config_is_the_official_file():
    """Where the workspace's reference copy exists, the checked-in fixture must be the same file."""
    path = REFERENCE / "config.json"
    if not path.is_file():
        pytest.skip(f"reference file missing: {path}")
    assert json.loads(path.read_text()) == official_k2()


def test_shipped_k2_config_loads_unchanged_and_equals_preset():
    raw = official_k2()
    cfg = ModelConfig.from_pretrained(K2_CONFIG)
    assert cfg == preset("kimi-k2")
    exported = cfg.to_hf()
    for key, value in raw.items():
        if key in exported:
            assert exported[key] == value, key


def test_k2_parameter_counts_are_exact():
    cfg = preset("kimi-k2")
    counts = count_params(cfg)
    assert counts.total == 1_026_408_232_448
    assert counts.embed_tokens == counts.lm_head == 1_174_405_120
    assert attention_params(cfg) == 101_122_048
    assert expert_params(cfg) == 44_040_192
    assert router_params(cfg) == 2_752_896
    assert counts.dense_mlp == 396_361_728
    assert round(counts.active / 1e9, 1) == 32.9


def test_family_configs_load():
    k0905 = ModelConfig.from_pretrained(CONFIGS / "kimi-k2-instruct-0905.json")
    assert k0905.rope_scaling["factor"] == 64.0
    assert k0905.softmax_scale == pytest.approx(0.14467962580268923)
    thinking = ModelConfig.from_pretrained(CONFIGS / "kimi-k2-thinking.json")
    assert thinking.quantization_config["quant_method"] == "compressed-tensors"
    assert thinking.quantization_config["config_groups"]["group_0"]["weights"]["group_size"] == 32
    assert count_params(thinking).total == 1_026_408_232_448
    moonlight = ModelConfig.from_pretrained(CONFIGS / "moonlight-16b-a3b.json")
    assert moonlight.q_lora_rank is None and moonlight.rope_type == "default"
    assert 15.5e9 < count_params(moonlight).total < 16.5e9  # "16B total, 3B activated"
    assert 2.5e9 < count_params(moonlight).active < 3.5e9


def test_deepseek_v3_groups_and_mtp_notice(caplog):
    with caplog.at_level(logging.INFO, logger="kimi_k2"):
        dsv3 = ModelConfig.from_pretrained(CONFIGS / "deepseek-v3.json")
    assert (dsv3.n_group, dsv3.topk_group, dsv3.num_nextn_predict_layers) == (8, 4, 1)
    assert "multi-token-prediction" in caplog.text
    assert round(count_params(dsv3).total / 1e9) == 671  # the published 671B main-model size
    assert round(count_params(dsv3).active / 1e9, 1) == 37.6  # "37B activated" (+ embeddings)


def test_transformers5_rope_parameters_layout(tmp_path):
    raw = {**official_k2()}
    scaling = raw.pop("rope_scaling")
    theta = raw.pop("rope_theta")
    raw["rope_parameters"] = {**{k: v for k, v in scaling.items() if k != "type"}, "rope_type": "yarn", "rope_theta": theta}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert ModelConfig.from_pretrained(tmp_path).softmax_scale == preset("kimi-k2").softmax_scale


@pytest.mark.parametrize(
    "change, field",
    [
        ({"scoring_func": "softmax"}, "scoring_func='softmax'"),
        ({"num_experts_per_tok": 400}, "num_experts_per_tok=400"),
        ({"num_key_value_heads": 8}, "num_key_value_heads=8"),
        ({"n_group": 5}, "n_group=5"),
        ({"topk_group": 9, "n_group": 8}, "topk_group=9"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling.type='dynamic'"),
        ({"hidden_size": 0}, "hidden_size=0"),
        ({"qk_rope_head_dim": 63}, "qk_rope_head_dim=63"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quant_method='gptq'"),
    ],
)
def test_validation_names_field_and_value(change, field):
    raw = {**official_k2(), **change}
    with pytest.raises(ValueError) as err:
        ModelConfig.from_hf(raw, source="my/config.json")
    assert field in str(err.value)
    assert "my/config.json" in str(err.value)


def test_unknown_model_type_and_malformed_json(tmp_path):
    with pytest.raises(ValueError, match="model_type='llama'"):
        ModelConfig.from_hf({"model_type": "llama"})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="malformed JSON"):
        ModelConfig.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ModelConfig.from_pretrained(tmp_path / "nowhere")


def test_medium_preset_has_k2_ratios():
    counts = count_params(preset("medium"))
    assert 400e6 < counts.total < 500e6
    assert 100e6 < counts.active < 160e6


def test_info_cli_prints_exact_counts(capsys):
    assert main(["info", "kimi-k2"]) == 0
    out = capsys.readouterr().out
    assert "1,026,408,232,448" in out
    assert main(["info", "kimi-k2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"]["total"] == 1_026_408_232_448
    assert main(["info", "no-such-model"]) == 1
