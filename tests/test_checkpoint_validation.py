"""Broken checkpoints fail fast, before any weight byte is read, with every problem named in one pass.

Each test copies a valid K2-layout FP8 checkpoint (3 shards `model-1-of-3.safetensors`), breaks one thing and
checks the message names the file, the tensor, what was expected and what was found; `kimi-k2 verify` and
`kimi-k2 convert` exit non-zero with the problems on stderr.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import kimi_k2
import kimi_k2.checkpoint.sources as sources
from kimi_k2.checkpoint.scheme import CheckpointError
from kimi_k2.checkpoint.validate import inspect_checkpoint, model_inventory
from kimi_k2.cli import main as cli_main
from kimi_k2.config import ModelConfig
from kimi_k2.model.transformer import build_model
from tests.checkpoint_files import (
    K2_FP8_QUANT,
    K2_THINKING_QUANT,
    K2_TINY,
    fp8_tensors,
    int4_tensors,
    random_state,
    with_inv_freq,
    write_checkpoint,
)

EXPERT = "model.layers.1.mlp.experts.3.up_proj.weight"  # [44, 160] → scale_inv [1, 2]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    stored, _ = fp8_tensors(random_state(K2_TINY, seed=11))
    return write_checkpoint(
        tmp_path_factory.mktemp("valid") / "ckpt", with_inv_freq(stored, K2_TINY), K2_TINY, quantization_config=K2_FP8_QUANT
    )


@pytest.fixture
def ckpt(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "ckpt"))


def weight_map(root: Path) -> dict[str, str]:
    return json.loads((root / "model.safetensors.index.json").read_text())["weight_map"]


def edit_index(root: Path, edit) -> None:
    path = root / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    edit(index["weight_map"])
    path.write_text(json.dumps(index))


def edit_shard(root: Path, tensor: str, edit) -> str:
    """Rewrite the shard holding `tensor` after `edit(tensors)`; returns the shard's file name."""
    shard = weight_map(root)[tensor]
    tensors = load_file(root / shard)
    edit(tensors)
    save_file(tensors, root / shard, metadata={"format": "pt"})
    return shard


def problems(root: Path) -> list[str]:
    report = inspect_checkpoint(root)
    return report.problems


def test_valid_checkpoint_has_no_problems_and_counts_what_it_ignores(ckpt):
    report = inspect_checkpoint(ckpt)
    assert report.problems == []
    assert report.ignored == {"rotary inv_freq buffers (recomputed from the config)": 3}
    assert report.scheme is not None and report.scheme.method == "fp8"


def test_inventory_matches_the_model_state_dict():
    cfg = ModelConfig.from_hf(K2_TINY)
    state = build_model(cfg).state_dict()
    assert [(p.name, p.shape) for p in model_inventory(cfg)] == [(n, tuple(t.shape)) for n, t in state.items()]


def test_missing_shard_names_the_file(ckpt):
    (ckpt / "model-2-of-3.safetensors").unlink()
    (found,) = problems(ckpt)
    assert "model-2-of-3.safetensors: missing shard file" in found and "the index maps" in found


def test_tensor_missing_from_the_index_is_reported(ckpt):
    edit_index(ckpt, lambda wm: wm.pop(EXPERT))
    found = problems(ckpt)
    assert any(f"missing tensor {EXPERT} (expected F8_E4M3 [44, 160]" in p for p in found)
    assert any(f"tensor {EXPERT}: in the shard but not in model.safetensors.index.json" in p for p in found)


def test_unexpected_tensor_is_reported(ckpt):
    name = "model.layers.1.mlp.experts.8.up_proj.weight"  # only 8 experts (0..7)
    shard = edit_shard(ckpt, EXPERT, lambda t: t.update({name: torch.zeros(44, 160, dtype=torch.bfloat16)}))
    edit_index(ckpt, lambda wm: wm.update({name: shard}))
    (found,) = problems(ckpt)
    assert found == f"{shard}: unexpected tensor {name}: expert 8 but config.json has n_routed_experts=8"


def test_wrong_shape_names_expected_and_found(ckpt):
    name = "model.layers.0.post_attention_layernorm.weight"
    shard = edit_shard(ckpt, name, lambda t: t.update({name: torch.ones(150, dtype=torch.bfloat16)}))
    (found,) = problems(ckpt)
    assert found == f"{shard}: tensor {name}: expected shape [160], found [150]"


def test_wrong_dtype_names_expected_and_found(ckpt):
    shard = edit_shard(ckpt, EXPERT, lambda t: t.update({EXPERT: t[EXPERT].to(torch.bfloat16)}))
    (found,) = problems(ckpt)
    assert found.startswith(f"{shard}: tensor {EXPERT}: expected dtype F8_E4M3") and found.endswith("found BF16")


def test_scale_without_its_weight_is_reported(ckpt):
    def drop(t):
        del t[EXPERT]

    edit_shard(ckpt, EXPERT, drop)
    edit_index(ckpt, lambda wm: wm.pop(EXPERT))
    found = problems(ckpt)
    assert any(f"scale tensor {EXPERT}_scale_inv has no weight {EXPERT} in the checkpoint" in p for p in found)
    assert any(f"missing tensor {EXPERT}" in p for p in found)


def test_truncated_header_names_the_file(ckpt):
    path = ckpt / "model-3-of-3.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    (found,) = problems(ckpt)
    assert found.startswith(f"{path}: corrupt or truncated safetensors header: it declares")


def test_corrupt_header_json_names_the_file(ckpt):
    path = ckpt / "model-1-of-3.safetensors"
    data = bytearray(path.read_bytes())
    data[8:9] = b"#"
    path.write_bytes(bytes(data))
    (found,) = problems(ckpt)
    assert found.startswith(f"{path}: corrupt safetensors header: not valid JSON")


def test_truncated_data_names_the_file_and_tensor(ckpt):
    path = ckpt / "model-1-of-3.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    (found,) = problems(ckpt)
    assert str(path) in found and "(truncated file)" in found


def test_malformed_index_json(ckpt):
    (ckpt / "model.safetensors.index.json").write_text('{"weight_map": {"a": ')
    (found,) = problems(ckpt)
    assert found.startswith(f"{ckpt / 'model.safetensors.index.json'}: malformed index JSON")


def test_bad_quantization_config_names_the_field(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"]["fmt"] = "e5m2"
    (ckpt / "config.json").write_text(json.dumps(config))
    (found,) = problems(ckpt)
    assert found.endswith("quantization_config.fmt: expected 'e4m3', found 'e5m2'")


def test_all_problems_are_reported_in_one_pass_without_reading_weights(ckpt, monkeypatch):
    (ckpt / "model-3-of-3.safetensors").unlink()
    edit_shard(ckpt, EXPERT, lambda t: t.update({EXPERT: t[EXPERT].to(torch.bfloat16)}))
    edit_index(ckpt, lambda wm: wm.pop("model.layers.0.input_layernorm.weight"))
    monkeypatch.setattr(sources, "read_tensor", lambda *a: pytest.fail("validation read weight bytes"))
    with pytest.raises(CheckpointError) as err:
        kimi_k2.load_model(ckpt)
    text = str(err.value)
    assert "missing shard file" in text and f"tensor {EXPERT}: expected dtype F8_E4M3" in text
    assert "missing tensor" in text and len(err.value.problems) >= 3


def test_int4_weight_shape_mismatch_is_reported_on_load(tmp_path):
    stored, _ = int4_tensors(random_state(K2_TINY, seed=12))
    name = "model.layers.2.mlp.experts.0.down_proj.weight_shape"
    stored[name] = torch.tensor([160, 40], dtype=torch.int32)
    root = write_checkpoint(tmp_path / "ckpt", stored, K2_TINY, quantization_config=K2_THINKING_QUANT)
    with pytest.raises(ValueError, match=rf"tensor {name}: expected \[160, 44\], found \[160, 40\]"):
        kimi_k2.load_model(root, weights="int4")


def test_verify_prints_a_summary_and_exits_zero(ckpt, capsys):
    assert cli_main(["verify", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "fp8 (float8_e4m3fn, 128x128 blocks)" in out and "problems    none" in out
    assert "F8_E4M3" in out and "ignored     3 tensors" in out


def test_verify_and_convert_exit_nonzero_with_problems_on_stderr(ckpt, tmp_path, capsys):
    (ckpt / "model-2-of-3.safetensors").unlink()
    assert cli_main(["verify", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert "model-2-of-3.safetensors: missing shard file" in err
    assert cli_main(["convert", str(ckpt), str(tmp_path / "out"), "--to", "bf16"]) == 1
    err = capsys.readouterr().err
    assert "model-2-of-3.safetensors: missing shard file" in err
    assert not (tmp_path / "out" / "config.json").exists()


def test_convert_refuses_to_overwrite_a_checkpoint(ckpt, tmp_path, capsys):
    assert cli_main(["convert", str(ckpt), str(ckpt), "--to", "bf16"]) == 1
    assert "must differ from the source" in capsys.readouterr().err
    assert cli_main(["verify", str(tmp_path / "nowhere")]) == 1
    assert "no such checkpoint directory" in capsys.readouterr().err
