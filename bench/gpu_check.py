"""One-GPU check of the engine: the `medium` preset in bf16 through `LLM` on the device, greedy agreement with
the CPU float32 engine on the first tokens, and decode tok/s next to HF transformers on the same device.

The weights are transformers' own random init rescaled to unit gain (so greedy choices are not near-ties that
bf16 rounding would flip), saved once with `save_pretrained` and loaded by both engines from those files.
`--device cpu` runs the same script without a GPU (the test suite runs it on the `tiny` preset). Exits 1 when
the device's greedy tokens differ from the CPU float32 ones within the first `--check-tokens`.

Usage:  python bench/gpu_check.py [--device cuda] [--preset medium] [--tokens 64] [--check-tokens 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import machine, run_hf, run_ours  # noqa: E402

from kimi_k2.config import preset  # noqa: E402
from kimi_k2.engine.llm import LLM  # noqa: E402
from kimi_k2.engine.sampling_params import SamplingParams  # noqa: E402


def unit_gain_hf_model(cfg, seed: int):
    """transformers' DeepseekV3ForCausalLM with its random init, matrices rescaled to std 0.7/sqrt(fan_in)."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(seed)
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(**{k: v for k, v in cfg.to_hf().items() if k != "model_type"}))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * (0.7 / param.shape[-1] ** 0.5))
    return hf.float().eval()


def greedy(llm: LLM, prompt: list[int], n: int) -> list[int]:
    return llm.generate([prompt], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))[0].token_ids


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return "CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--tokens", type=int, default=64, help="decode tokens timed (default: 64)")
    ap.add_argument("--check-tokens", type=int, default=8, help="first greedy tokens that must agree (default: 8)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = preset(args.preset)
    prompt = [(37 * i + 11) % cfg.vocab_size for i in range(args.prompt_tokens)]
    print(f"machine: {machine()}; device: {device_name(args.device)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        hf = unit_gain_hf_model(cfg, args.seed)
        hf.save_pretrained(tmp, safe_serialization=True)
        reference = greedy(LLM(tmp, dtype=torch.float32, weights="dequantize", num_kv_blocks=64), prompt, args.check_tokens)
        ours = LLM(tmp, dtype=torch.bfloat16, weights="dequantize", device=args.device, num_kv_blocks=64)
        got = greedy(ours, prompt, args.check_tokens)
        agree = next((i for i, (a, b) in enumerate(zip(got, reference)) if a != b), len(reference))
        ours_run = run_ours(ours.engine, [prompt], args.tokens)
        del ours
        hf = hf.to(device=args.device, dtype=torch.bfloat16)
        with torch.inference_mode():
            hf_tokens = hf.generate(torch.tensor([prompt], device=args.device), max_new_tokens=args.check_tokens,
                                    do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
        hf_agree = next((i for i, (a, b) in enumerate(zip(hf_tokens, reference)) if a != b), len(reference))
        hf_run = run_hf(hf, [prompt], args.tokens)
    rows = [
        f"| greedy tokens equal to CPU float32 (first {args.check_tokens}) | {agree} | {hf_agree} | |",
        f"| decode tok/s, batch 1, {args.tokens} tokens | {ours_run.decode_tok_s:.1f} | {hf_run.decode_tok_s:.1f} | "
        f"{ours_run.decode_tok_s / hf_run.decode_tok_s:.2f}× |",
        f"| prefill of {args.prompt_tokens} tokens + first token, s | {ours_run.prefill_s:.3f} | {hf_run.prefill_s:.3f} | |",
    ]
    print(f"\n{args.preset} preset, bf16 on {device_name(args.device)}\n")
    print("| measurement | ours | HF transformers | ours / HF |\n|---|---:|---:|---:|\n" + "\n".join(rows))
    if agree < args.check_tokens:
        print(f"FAIL: the device's greedy tokens differ from CPU float32 at token {agree}: {got} vs {reference}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
