"""Run one scheduler step on the model: a packed batch of prefill chunks and decode tokens over the paged pool.

Two ways to run a step, same result (tests/test_engine_exact.py checks it):

* reference — pad the chunks into a `[B, S]` batch and call the model's own `forward` with a `PagedStep`
  cache (`LatentCache` protocol). Simple, but pads every row to the longest chunk and gathers every row's keys
  into a padded tensor per layer.
* fast (default) — the engine's own layer loop over the model's modules on the *packed* tokens `[N, D]` (no
  padding: every projection and expert matmul sees exactly the step's tokens), with weights prepared once.
  Every product goes through the weight object of `kimi_k2.kernels.weight` (`Weight.mm`), which knows the
  format each weight is stored in (fp32, bf16, block FP8, INT4) and picks the C++ kernels for few rows or torch
  tiles for many: the loop has no branch per format. `q_a_proj` and `kv_a_proj_with_mqa` run as one product,
  and every MLP's `gate_proj` / `up_proj` (one fused tensor for plain fp32/bf16 Linears, whose modules' weights
  become row-block views into it: memory-neutral; side by side without a copy otherwise); the absorbed-attention
  splits of `kv_b_proj` (`w_uk`, `w_uv`) are cut once. Routed experts form an `ExpertBank` (each expert's
  stored tensors, where the file has them): a decode step runs all its (token, expert) pairs in one kernel
  call; batched steps run fp32 experts through PyTorch's grouped matmul over stacked copies
  (`experts_grouped_mm`: two products per layer whatever the number of experts used) and other formats expert
  by expert through `Weight.mm`. `o_proj`, the dense down projection and the shared expert add into the
  residual stream in place (`out=`). Only sampled rows reach the final norm and `lm_head`; a prefill chunk
  that does not end its prompt computes no logits at all. RoPE is one complex product (`apply_rope_complex`)
  and RMSNorm one call (`rms_norm`). Dense fp32 products of 12-32 rows run as `(W @ xᵀ)ᵀ` where MKL reads
  that form faster (`kimi_k2.kernels.weight`, bench/gemm_layout.py).

A model sharded over ranks (`kimi_k2.parallel`: every rank runs this loop on the same tokens, in lockstep) differs
in four places only: the vocabulary-split embedding's rows are summed over the ranks; a product whose weight is
split along its inputs (`Weight.shard`: `o_proj`, the MLPs' `down_proj`, the MoE layer as a whole) adds into a
float32 partial sum that one all-reduce completes before it joins the residual stream; with expert parallelism
the expert kernels skip other ranks' experts (id −1) or the pairs travel by all-to-all; the vocabulary-split
`lm_head` gathers the sampled rows' logits to rank 0.

Attention per step: all 1-token rows (decodes) attend together with absorbed MLA over the latent pool,
`[q_latent | q_pe] · [c_kv | k_pe]` in one batched matmul, their keys gathered once per layer with
`index_select`. Each multi-token chunk (prefill) attends on its own with the path `prefill_attention` names:
`absorbed`, `naive` (expand the latent to per-head K/V with `kv_b_proj`, then fused SDPA), or `auto` (naive
from `NAIVE_PREFILL_MIN_TOKENS` new tokens on: expanding costs T×C×H×(N+V) once but makes each score
N+R wide instead of C+R — measured in bench/decode.py).

Legend: N packed tokens of the step, Bd decode rows, S chunk length, T keys, H heads, D hidden, C kv_lora_rank,
R rope dim, W = C + R, Q = qk_nope_head_dim, V v_head_dim, E experts, I expert width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from kimi_k2.engine.paged_cache import PagedLatentPool, PagedStep
from kimi_k2.kernels.weight import ConcatWeight, ExpertBank, Weight, concat, rms_norm_rows, weight_of
from kimi_k2.model.attention import MASKED, MLA
from kimi_k2.model.linear import Linear
from kimi_k2.model.moe import HAS_GROUPED_MM, MLP, MoE, Routing, dispatch_grouped, experts_grouped_mm, swiglu_rows
from kimi_k2.model.quant_linear import FP8Linear, Int4Linear
from kimi_k2.model.rope import apply_rope_complex, rope_cis
from kimi_k2.model.transformer import KimiK2ForCausalLM
from kimi_k2.parallel.collectives import Collectives
from kimi_k2.parallel.config import ParallelConfig
from kimi_k2.parallel.layout import shard_of
from kimi_k2.parallel.shard import ExpertElsewhere, parallel_of

AnyWeight = Weight | ConcatWeight
NAIVE_PREFILL_MIN_TOKENS = 64
PREFILL_ATTENTION = ("auto", "naive", "absorbed")


@dataclass(slots=True)
class StepChunk:
    """Compute tokens [start, start + len(token_ids)) of a sequence whose slots are given by `block_table`."""

    token_ids: Sequence[int]
    start: int
    block_table: Sequence[int]
    wants_logits: bool


# ---------------------------------------------------------------------- weight preparation
def _is_plain_linear(module: nn.Module) -> bool:
    """An nn.Linear (or subclass) whose forward is nn.Linear's or ours (`Linear`: the same, widening a weight stored
    in another float dtype)."""
    return isinstance(module, nn.Linear) and type(module).forward in (nn.Linear.forward, Linear.forward)


def _concat_rows(linears: Sequence[nn.Module]) -> AnyWeight:
    """One product over modules that share their input, outputs side by side.

    Plain Linears are stored as one tensor [ΣO, I] (checkpoint layout), each module's weight becoming a
    contiguous row-block view into it (memory-neutral): one MKL product for the prefill path. Weights kept in a
    quantized format stay where they are (a `ConcatWeight` runs them one after the other, nothing copied)."""
    if not all(_is_plain_linear(m) for m in linears) or len({m.weight.dtype for m in linears}) > 1:
        return concat([weight_of(m) for m in linears])
    if len(linears) == 1:
        return weight_of(linears[0])
    fused = torch.cat([m.weight.detach() for m in linears], dim=0)
    offset = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight.data = fused[offset : offset + rows]
        offset += rows
    return Weight.from_dense(fused)


@dataclass(slots=True)
class MLPWeights:
    gate_up: AnyWeight  # [2I, D]: gate rows, then up rows
    down: Weight  # [D, I]


@dataclass(slots=True)
class StackedExperts:
    """Dense routed experts stacked for torch's grouped matmul (fp32 / bf16 experts of the model's dtype)."""

    w13: torch.Tensor  # (E, 2I, D)
    w2: torch.Tensor  # (E, D, I)


@dataclass(slots=True)
class MoEWeights:
    bank: ExpertBank  # the routed experts this rank holds (all of them, or their slices, without expert parallelism)
    stacked: StackedExperts | None
    shared: MLPWeights | None
    first_expert: int = 0  # global id of the bank's expert 0
    held_elsewhere: bool = False  # expert parallelism: the other experts are other ranks'

    @property
    def partial_sums(self) -> bool:
        """This rank's output of the layer is its part of a sum over the ranks (experts held elsewhere, experts or
        the shared expert split along their inputs): one all-reduce completes it."""
        shared = self.shared is not None and self.shared.down.shard.partial_sums
        return self.held_elsewhere or self.bank.down[0].shard.partial_sums or shared


@dataclass(slots=True)
class AttentionWeights:
    inputs: AnyWeight  # [q_lora + W, D] (or [H*(Q+R) + W, D] without q LoRA): the query and latent projections
    q_split: int  # outputs of `inputs` that are the query part
    q_b: AnyWeight | None  # [H*(Q+R), q_lora], None without q LoRA
    o: AnyWeight  # [D, H*V]
    kv_b: torch.Tensor  # (H*(Q+V), C) dense, for prefill's naive path
    w_uk: torch.Tensor  # (H, Q, C)
    w_uv_t: torch.Tensor  # (H, C, V)


@dataclass(slots=True)
class LayerWeights:
    attention: AttentionWeights
    mlp: MLPWeights | MoEWeights


def _prepare_mlp(mlp: MLP) -> MLPWeights:
    return MLPWeights(gate_up=_concat_rows([mlp.gate_proj, mlp.up_proj]), down=weight_of(mlp.down_proj))


def _stack_experts(experts: list[MLP]) -> StackedExperts:
    """Copy dense experts into stacked tensors and make each module's weights views into them (memory-neutral)."""
    inter, hidden = experts[0].gate_proj.weight.shape
    ref = experts[0].gate_proj.weight
    w13 = torch.empty(len(experts), 2 * inter, hidden, dtype=ref.dtype, device=ref.device)
    w2 = torch.empty(len(experts), hidden, inter, dtype=ref.dtype, device=ref.device)
    for e, expert in enumerate(experts):
        w13[e, :inter] = expert.gate_proj.weight.detach()
        w13[e, inter:] = expert.up_proj.weight.detach()
        w2[e] = expert.down_proj.weight.detach()
        expert.gate_proj.weight.data = w13[e, :inter]
        expert.up_proj.weight.data = w13[e, inter:]
        expert.down_proj.weight.data = w2[e]
    return StackedExperts(w13=w13, w2=w2)


def _prepare_moe(moe: MoE, dtype: torch.dtype) -> MoEWeights:
    held = [(e, expert) for e, expert in enumerate(moe.experts) if not isinstance(expert, ExpertElsewhere)]
    experts = [expert for _, expert in held]
    elsewhere = len(experts) < len(moe.experts)
    # fp32 experts are stacked (a copy) for batched steps' grouped matmul; bf16 and quantized experts stay where
    # they are (possibly memory-mapped) and run through the kernels, expert by expert.
    fp32 = all(_is_plain_linear(m) and m.weight.dtype == dtype == torch.float32 for e in experts for m in (e.gate_proj, e.up_proj, e.down_proj))
    stacked = _stack_experts(experts) if fp32 and not elsewhere else None
    bank = ExpertBank(
        gate=[weight_of(e.gate_proj) for e in experts],
        up=[weight_of(e.up_proj) for e in experts],
        down=[weight_of(e.down_proj) for e in experts],
    )
    shared = _prepare_mlp(moe.shared_experts) if moe.shared_experts is not None else None
    return MoEWeights(bank=bank, stacked=stacked, shared=shared, first_expert=held[0][0], held_elsewhere=elsewhere)


def _prepare_attention(attn: MLA, dtype: torch.dtype) -> AttentionWeights:
    query = attn.q_proj if hasattr(attn, "q_proj") else attn.q_a_proj
    kv_b = weight_of(attn.kv_b_proj).dense(dtype)  # (H*(Q+V), C)
    w = kv_b.unflatten(0, (attn.n_heads, attn.nope_dim + attn.v_dim))  # (H, Q+V, C)
    return AttentionWeights(
        inputs=_concat_rows([query, attn.kv_a_proj_with_mqa]),
        q_split=query.out_features,
        q_b=_concat_rows([attn.q_b_proj]) if hasattr(attn, "q_b_proj") else None,
        o=_concat_rows([attn.o_proj]),
        kv_b=kv_b,
        w_uk=w[:, : attn.nope_dim].contiguous(),
        w_uv_t=w[:, attn.nope_dim :].transpose(1, 2).contiguous(),
    )


def fast_path_unsupported(model: KimiK2ForCausalLM) -> str | None:
    """Why the fast runner cannot run `model` (a projection with a bias or a forward of its own), or None."""
    for name, module in model.named_modules():
        if isinstance(module, (FP8Linear, Int4Linear)):
            if module.bias is not None:
                return f"{name} has a bias"
            if isinstance(module, FP8Linear) and module.activation_scheme != "weight_only":
                return f"{name} emulates FP8 activations (activation_scheme={module.activation_scheme!r})"
            continue
        if isinstance(module, nn.Linear) and not _is_plain_linear(module):
            return f"{name} is a {type(module).__name__} with its own forward"
        if isinstance(module, nn.Linear) and module.bias is not None:
            return f"{name} has a bias"
    return None


# ---------------------------------------------------------------------- step metadata
@dataclass(slots=True)
class StepMeta:
    input_ids: torch.Tensor  # (N,)
    positions: torch.Tensor  # (N,)
    write_slots: torch.Tensor  # (N,)
    num_decode: int  # the first num_decode packed tokens are 1-token rows
    decode_key_slots: torch.Tensor | None  # (Bd, T)
    decode_mask: torch.Tensor | None  # (Bd, 1, T) or None when every row sees all T keys
    prefills: list[tuple[int, int, torch.Tensor, torch.Tensor | None]]  # (row offset, S, key slots [T], mask [S, T])
    logit_rows: torch.Tensor  # (number of sampled rows,) indices into the packed tokens
    all_rows_sampled: bool  # logit_rows is every packed row in order (a decode-only step): no gather needed
    order: list[int]  # chunk index of each packed row group (decodes first)

    def to(self, device: torch.device) -> StepMeta:
        """The same step with its tensors on `device` (the pool's); itself when they are there already."""
        if self.input_ids.device == device:
            return self

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            input_ids=self.input_ids.to(device),
            positions=self.positions.to(device),
            write_slots=self.write_slots.to(device),
            decode_key_slots=move(self.decode_key_slots),
            decode_mask=move(self.decode_mask),
            prefills=[(offset, n, slots.to(device), move(mask)) for offset, n, slots, mask in self.prefills],
            logit_rows=self.logit_rows.to(device),
        )


def _slots(table: torch.Tensor, block_size: int, length: int) -> torch.Tensor:
    """Slots of positions 0..length-1 from a block table [n_blocks]."""
    offsets = torch.arange(block_size)
    return (table.unsqueeze(-1) * block_size + offsets).flatten()[:length]


def build_meta(chunks: Sequence[StepChunk], block_size: int) -> StepMeta:
    order = sorted(range(len(chunks)), key=lambda i: len(chunks[i].token_ids) != 1)  # stable: decodes first
    ids: list[int] = []
    positions: list[int] = []
    write: list[torch.Tensor] = []
    logit_rows: list[int] = []
    decode_keys: list[torch.Tensor] = []
    prefills: list[tuple[int, int, torch.Tensor, torch.Tensor | None]] = []
    offset = 0
    for i in order:
        chunk = chunks[i]
        n, start = len(chunk.token_ids), chunk.start
        end = start + n
        ids.extend(chunk.token_ids)
        positions.extend(range(start, end))
        table = torch.tensor(chunk.block_table[: -(-end // block_size)], dtype=torch.long)
        key_slots = _slots(table, block_size, end)
        write.append(key_slots[start:])
        if n == 1:
            decode_keys.append(key_slots)
        else:  # query at position start+s sees keys 0..start+s
            mask = torch.arange(end).unsqueeze(0) <= torch.arange(start, end).unsqueeze(1)  # (S, T)
            prefills.append((offset, n, key_slots, mask))
        if chunk.wants_logits:
            logit_rows.append(offset + n - 1)
        offset += n
    decode_key_slots = decode_mask = None
    if len(decode_keys) == 1:
        decode_key_slots = decode_keys[0].unsqueeze(0)
    elif decode_keys:  # pad to the longest context with slot 0, masked out
        lengths = torch.tensor([len(k) for k in decode_keys])
        decode_key_slots = torch.nn.utils.rnn.pad_sequence(decode_keys, batch_first=True)
        if int(lengths.min()) < decode_key_slots.shape[1]:
            decode_mask = (torch.arange(decode_key_slots.shape[1]).unsqueeze(0) < lengths.unsqueeze(-1)).unsqueeze(1)
    return StepMeta(
        input_ids=torch.tensor(ids, dtype=torch.long),
        positions=torch.tensor(positions, dtype=torch.long),
        write_slots=torch.cat(write),
        num_decode=len(decode_keys),
        decode_key_slots=decode_key_slots,
        decode_mask=decode_mask,
        prefills=prefills,
        logit_rows=torch.tensor(logit_rows, dtype=torch.long),
        all_rows_sampled=logit_rows == list(range(offset)),
        order=order,
    )


# ---------------------------------------------------------------------- the runner
class ModelRunner:
    """Executes steps. `execute(chunks)` returns float32 logits [number of chunks that want them, V], in the
    order of `chunks`."""

    def __init__(
        self,
        model: KimiK2ForCausalLM,
        pool: PagedLatentPool,
        *,
        mode: str = "fast",
        prefill_attention: str = "auto",
        int8_activations: bool = False,
    ) -> None:
        if mode not in ("fast", "reference"):
            raise ValueError(f"runner mode {mode!r}: choose 'fast' or 'reference'")
        if prefill_attention not in PREFILL_ATTENTION:
            raise ValueError(f"prefill_attention {prefill_attention!r}: choose one of {PREFILL_ATTENTION}")
        if int8_activations and mode != "fast":
            raise ValueError("int8_activations is a mode of the fast runner's kernels; the reference runner has none")
        self.model, self.pool, self.mode, self.prefill_attention = model, pool, mode, prefill_attention
        self.cfg = model.config
        self.dtype = model.compute_dtype
        self.parallel: ParallelConfig = parallel_of(model)
        # The collectives of a sharded model; None for a whole one (then every reduce below is a no-op).
        self.comm = Collectives(self.parallel, pool.kv.device) if self.parallel.is_parallel else None
        if self.comm is not None and mode != "fast":
            raise ValueError("a sharded model runs on the fast runner only (the reference runner is the model's own "
                             "single-process forward)")
        self.layers: list[LayerWeights] = []
        self.lm_head: AnyWeight | None = None
        if mode == "fast":
            why = fast_path_unsupported(model)
            if why is not None:
                raise ValueError(f"the fast runner cannot run this model ({why}); use mode='reference'")
            dtype = model.compute_dtype
            with torch.no_grad():
                self.lm_head = weight_of(model.lm_head, lm_head=True)
                for layer in model.model.layers:
                    mlp = layer.mlp
                    self.layers.append(
                        LayerWeights(
                            attention=_prepare_attention(layer.self_attn, dtype),
                            mlp=_prepare_moe(mlp, dtype) if isinstance(mlp, MoE) else _prepare_mlp(mlp),
                        )
                    )
            if self.comm is not None:
                self._record_shards()
            if int8_activations:
                self._use_int8_activations()

    def _record_shards(self) -> None:
        """Give every sharded prepared weight its `Shard` (the layout's): the layer loop reduces where a weight is
        split along its inputs, and nowhere else."""
        cfg, pc = self.cfg, self.parallel

        def record(weight: AnyWeight | None, module: str) -> None:
            for part in weight.parts if weight is not None else ():
                shard = shard_of(f"{module}.weight", cfg, pc)
                assert shard is not None
                part.shard = shard

        record(self.lm_head, "lm_head")
        for i, weights in enumerate(self.layers):
            attention, mlp = weights.attention, weights.mlp
            record(attention.q_b, f"model.layers.{i}.self_attn.q_b_proj")
            record(attention.o, f"model.layers.{i}.self_attn.o_proj")
            dense = mlp if isinstance(mlp, MLPWeights) else mlp.shared
            prefix = f"model.layers.{i}.mlp" + ("" if isinstance(mlp, MLPWeights) else ".shared_experts")
            if dense is not None:
                record(dense.gate_up, f"{prefix}.gate_proj")
                record(dense.down, f"{prefix}.down_proj")
            if isinstance(mlp, MoEWeights):
                for e, (gate, up, down) in enumerate(zip(mlp.bank.gate, mlp.bank.up, mlp.bank.down)):
                    expert = f"model.layers.{i}.mlp.experts.{mlp.first_expert + e}"
                    record(gate, f"{expert}.gate_proj")
                    record(up, f"{expert}.up_proj")
                    record(down, f"{expert}.down_proj")

    def _use_int8_activations(self) -> None:
        """INT4 weights take int8 activations (quantized per 32 inputs, integer dot products: docs/engine.md)."""
        for layer in self.layers:
            attention = layer.attention
            weights = [attention.inputs, attention.o, *([attention.q_b] if attention.q_b is not None else [])]
            mlp = layer.mlp if isinstance(layer.mlp, MLPWeights) else layer.mlp.shared
            if mlp is not None:
                weights += [mlp.gate_up, mlp.down]
            for part in (p for w in weights for p in w.parts):
                part.int8_activations = part.fmt == "int4"
            if isinstance(layer.mlp, MoEWeights):
                layer.mlp.bank.set_int8_activations(True)

    @torch.inference_mode()
    def execute(self, chunks: Sequence[StepChunk]) -> torch.Tensor:
        """Run one step. On a sharded model every rank calls this with the same chunks; rank 0 gets the logits,
        the other ranks an empty [0, V] tensor."""
        if self.mode == "reference":
            return self._execute_reference(chunks)
        meta = build_meta(chunks, self.pool.block_size).to(self.pool.kv.device)
        logits = self._forward(meta)
        if logits is None:  # a rank other than 0 of a sharded model
            return torch.empty(0, self.cfg.vocab_size)
        # logit rows come in packed order (decodes first); put them back in chunk order
        packed_order = [i for i in meta.order if chunks[i].wants_logits]
        back = sorted(range(len(packed_order)), key=lambda r: packed_order[r])
        return logits[back] if back != list(range(len(back))) else logits

    # ------------------------------------------------------------------ reference
    def _execute_reference(self, chunks: Sequence[StepChunk]) -> torch.Tensor:
        step = PagedStep(
            self.pool,
            [c.block_table for c in chunks],
            [c.start for c in chunks],
            [len(c.token_ids) for c in chunks],
        )
        s_max = step.positions.shape[1]
        ids = torch.zeros((len(chunks), s_max), dtype=torch.long)
        for b, c in enumerate(chunks):
            ids[b, : len(c.token_ids)] = torch.tensor(list(c.token_ids))
        logits = self.model(ids.to(self.pool.kv.device), positions=step.positions, cache=step)
        rows = [(b, len(c.token_ids) - 1) for b, c in enumerate(chunks) if c.wants_logits]
        return torch.stack([logits[b, s] for b, s in rows]).float() if rows else logits.new_zeros(0, logits.shape[-1])

    # ------------------------------------------------------------------ fast
    def _forward(self, meta: StepMeta) -> torch.Tensor | None:
        model = self.model
        h = self._embed(meta.input_ids)  # (N, D), the runner's own: updated in place
        cis = rope_cis(*model.rope(meta.positions))  # (N, R/2) complex
        for layer_idx, (layer, weights) in enumerate(zip(model.model.layers, self.layers)):
            attended = self._attention(layer_idx, layer.self_attn, weights.attention, rms_norm_rows(layer.input_layernorm, h), cis, meta)
            partial = self._partial(h, weights.attention.o.shard.partial_sums)
            weights.attention.o.mm(attended, out=partial)  # h += o_proj(attended)  (N, D)
            self._reduce_into(h, partial)
            x = rms_norm_rows(layer.post_attention_layernorm, h)
            mlp = weights.mlp
            partial = self._partial(h, mlp.partial_sums if isinstance(mlp, MoEWeights) else mlp.down.shard.partial_sums)
            if isinstance(mlp, MoEWeights):
                self._moe(layer.mlp, mlp, x, out=partial)
            else:
                mlp.down.mm(_swiglu_hidden(x, mlp), out=partial)  # h += down(silu(gate) * up)
            self._reduce_into(h, partial)
        if meta.logit_rows.numel() == 0:
            return h.new_zeros(0, model.config.vocab_size, dtype=torch.float32)
        last = rms_norm_rows(model.model.norm, h if meta.all_rows_sampled else h[meta.logit_rows])  # (n, D)
        assert self.lm_head is not None
        logits = self.lm_head.mm(last).float()  # (n, V), or (n, ≤ceil(V/N)) of a vocabulary shard
        if self.lm_head.shard.dim is None:
            return logits
        assert self.comm is not None
        width = self.parallel.vocab_rows(self.cfg.vocab_size)
        if logits.shape[1] < width:  # the last rank's shorter shard, padded so every rank sends the same shape
            logits = torch.nn.functional.pad(logits, (0, width - logits.shape[1]), value=float("-inf"))
        gathered = self.comm.gather_columns(logits)
        return None if gathered is None else gathered[:, : self.cfg.vocab_size]

    # ------------------------------------------------------------------ the reduces of a sharded model
    def _partial(self, h: torch.Tensor, partial_sums: bool) -> torch.Tensor:
        """Where a product adds its output: `h` itself, or, when the product's weights are split along their inputs
        (`partial_sums`), a float32 buffer that `_reduce_into` sums over the ranks and then adds to `h` once (so a
        residual is added once, after the reduce, in float32)."""
        return torch.zeros(h.shape, dtype=torch.float32, device=h.device) if partial_sums else h

    def _reduce_into(self, h: torch.Tensor, partial: torch.Tensor) -> None:
        if partial is not h:
            assert self.comm is not None
            h.add_(self.comm.all_reduce_(partial).to(h.dtype))

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows [N, D] in the compute dtype; of a vocabulary-split table, each rank's own rows summed."""
        table = self.model.model.embed_tokens
        if self.comm is None:
            return table(ids).to(self.dtype)
        start = self.parallel.vocab_part(self.cfg.vocab_size)[0]
        local = ids - start
        mine = (local >= 0) & (local < table.num_embeddings)
        rows = table(local.clamp(0, table.num_embeddings - 1)).float() * mine.unsqueeze(-1)  # (N, D)
        return self.comm.all_reduce_(rows).to(self.dtype)

    def _attention(
        self, layer_idx: int, attn: MLA, w: AttentionWeights, x: torch.Tensor, cis: torch.Tensor, meta: StepMeta
    ) -> torch.Tensor:
        """x [N, D] (normed) → attention output [N, H*V] (before o_proj); writes the step's latents into the pool."""
        n_tok = x.shape[0]
        heads, q_dim, c_dim = attn.n_heads, attn.nope_dim, attn.kv_lora_rank
        a = w.inputs.mm(x)  # (N, q_split + W)
        q = a[:, : w.q_split]
        if w.q_b is not None:
            q = w.q_b.mm(rms_norm_rows(attn.q_a_layernorm, q))
        q = q.view(n_tok, heads, -1)  # (N, H, Q+R)
        q_nope, q_pe = q[..., :q_dim], apply_rope_complex(q[..., q_dim:], cis.unsqueeze(1))  # (N,H,Q), (N,H,R)
        c_kv = rms_norm_rows(attn.kv_a_layernorm, a[:, w.q_split : w.q_split + c_dim])
        k_pe = apply_rope_complex(a[:, w.q_split + c_dim :], cis)
        kv = self.pool.kv[layer_idx]  # (slots, W)
        kv.index_copy_(0, meta.write_slots, torch.cat([c_kv, k_pe], dim=-1).to(kv.dtype))

        nd = meta.num_decode
        if nd == n_tok:  # a decode-only step: every row attends together
            assert meta.decode_key_slots is not None
            return self._absorbed(attn, w, q_nope, q_pe, kv, meta.decode_key_slots, meta.decode_mask).flatten(1)
        out = x.new_empty(n_tok, heads, attn.v_dim)
        if nd:
            assert meta.decode_key_slots is not None
            out[:nd] = self._absorbed(attn, w, q_nope[:nd], q_pe[:nd], kv, meta.decode_key_slots, meta.decode_mask)
        for offset, s_len, key_slots, mask in meta.prefills:
            rows = slice(offset, offset + s_len)
            path = self.prefill_attention
            if path == "auto":
                path = "naive" if s_len >= NAIVE_PREFILL_MIN_TOKENS else "absorbed"
            if path == "naive":
                out[rows] = self._naive(attn, w, q_nope[rows], q_pe[rows], kv.index_select(0, key_slots), mask)
            else:
                out[rows] = self._absorbed_chunk(attn, w, q_nope[rows], q_pe[rows], kv, key_slots, mask)
        return out.flatten(1)

    @staticmethod
    def _absorbed(
        attn: MLA,
        w: AttentionWeights,
        q_nope: torch.Tensor,
        q_pe: torch.Tensor,
        kv: torch.Tensor,
        key_slots: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Decode rows: q_nope [Bd, H, Q], q_pe [Bd, H, R], keys by slot [Bd, T] → [Bd, H, V]."""
        bd, t_len = key_slots.shape
        keys = kv.index_select(0, key_slots.view(-1)).view(bd, t_len, -1)  # (Bd, T, W)
        q_latent = torch.bmm(q_nope.transpose(0, 1), w.w_uk)  # (H, Bd, C)
        query = torch.cat([q_latent.transpose(0, 1), q_pe], dim=-1)  # (Bd, H, W)
        scores = torch.bmm(query, keys.transpose(1, 2)).float().mul_(attn.softmax_scale)  # (Bd, H, T)
        if mask is not None:
            scores = scores.masked_fill_(~mask, MASKED)
        probs = scores.softmax(dim=-1).to(keys.dtype)
        out_latent = torch.bmm(probs, keys[..., : attn.kv_lora_rank])  # (Bd, H, C)
        return torch.bmm(out_latent.transpose(0, 1), w.w_uv_t).transpose(0, 1)  # (Bd, H, V)

    @staticmethod
    def _absorbed_chunk(
        attn: MLA,
        w: AttentionWeights,
        q_nope: torch.Tensor,
        q_pe: torch.Tensor,
        kv: torch.Tensor,
        key_slots: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """One prefill chunk, absorbed: q_nope [S, H, Q], q_pe [S, H, R], key slots [T] → [S, H, V]."""
        keys = kv.index_select(0, key_slots)  # (T, W)
        q_latent = torch.einsum("shq,hqc->hsc", q_nope, w.w_uk)
        query = torch.cat([q_latent, q_pe.transpose(0, 1)], dim=-1)  # (H, S, W)
        scores = torch.matmul(query, keys.t()).float() * attn.softmax_scale  # (H, S, T)
        if mask is not None:
            scores = scores.masked_fill(~mask, MASKED)
        probs = scores.softmax(dim=-1).to(keys.dtype)
        out_latent = torch.matmul(probs, keys[:, : attn.kv_lora_rank])  # (H, S, C)
        return torch.bmm(out_latent, w.w_uv_t).transpose(0, 1)  # (S, H, V)

    @staticmethod
    def _naive(
        attn: MLA, w: AttentionWeights, q_nope: torch.Tensor, q_pe: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """One prefill chunk, naive: expand keys [T, W] to per-head K/V, fused SDPA. Returns [S, H, V]."""
        t_len = keys.shape[0]
        c_dim = attn.kv_lora_rank
        kv = F.linear(keys[:, :c_dim], w.kv_b).view(t_len, attn.n_heads, attn.nope_dim + attn.v_dim)  # (T, H, Q+V)
        k_nope, v = kv[..., : attn.nope_dim], kv[..., attn.nope_dim :]
        k_pe = keys[:, c_dim:].unsqueeze(1).expand(t_len, attn.n_heads, attn.rope_dim)
        k = torch.cat([k_nope, k_pe], dim=-1).transpose(0, 1)  # (H, T, Q+R)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(0, 1)  # (H, S, Q+R)
        out = F.scaled_dot_product_attention(q, k, v.transpose(0, 1), attn_mask=mask, scale=attn.softmax_scale)
        return out.transpose(0, 1)  # (S, H, V)

    # ------------------------------------------------------------------ experts
    def _moe(self, moe: MoE, w: MoEWeights, x: torch.Tensor, out: torch.Tensor) -> None:
        """out [N, D] += routed experts + shared expert of x [N, D] (normed). With expert parallelism, this rank's
        experts' part (every rank routes every token: the router is replicated); the caller's reduce sums the
        ranks' parts, shared expert included, in one all-reduce."""
        routing = moe.gate(x)
        if w.held_elsewhere and self.parallel.moe_combine == "alltoall":
            routed = self._experts_alltoall(w, x, routing)
        else:
            if w.held_elsewhere:  # global expert ids → this rank's bank, -1 for another rank's expert
                local = routing.experts - w.first_expert
                local = local.masked_fill_((local < 0) | (local >= w.bank.num_experts), -1)
                routing = Routing(weights=routing.weights, experts=local)
            routed = self._held_experts(w, x, routing)
        out.add_(routed.to(out.dtype))
        if w.shared is not None:
            w.shared.down.mm(_swiglu_hidden(x, w.shared), out=out)

    @staticmethod
    def _held_experts(w: MoEWeights, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Σ_k weight · expert(x) [N, D] float32 over the assignments to this rank's bank (local ids; -1 skipped)."""
        n_tok = x.shape[0]
        routed = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        if n_tok <= w.bank.native_tokens and w.bank.run_native(x, routing.experts, routing.weights, routed):
            return routed  # decode: every (token, expert) pair in one call, straight from the stored weights
        if w.stacked is not None and HAS_GROUPED_MM and n_tok > 2:  # one grouped product per projection
            return experts_grouped_mm(x, routing, w.stacked.w13, w.stacked.w2)
        return dispatch_grouped(x, routing, w.bank.num_experts, w.bank.expert_mlp)

    def _experts_alltoall(self, w: MoEWeights, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Expert parallelism by dispatch and combine: this rank routes its 1/N of the tokens, sends each (token,
        expert) row to the expert's rank (all-to-all), runs the rows it receives through its experts, and sends
        the outputs back (all-to-all). Returns [N, D] float32: this rank's tokens' routed sums, zeros elsewhere
        (the caller's all-reduce assembles every token, with the shared expert's partial sums)."""
        assert self.comm is not None
        world, rank = self.parallel.world_size, self.parallel.rank
        n_tok, top_k = routing.experts.shape
        t0, t1 = rank * n_tok // world, (rank + 1) * n_tok // world  # this rank's tokens
        experts, weights = routing.experts[t0:t1].flatten(), routing.weights[t0:t1].flatten()  # (m·K,)
        owner = torch.div(experts, w.bank.num_experts, rounding_mode="floor")  # every rank holds E/N experts
        order = owner.argsort(stable=True)  # pairs grouped by destination rank
        send = torch.bincount(owner, minlength=world).tolist()
        recv = [row[rank] for row in self.comm.all_gather_ints(send)]
        pair_tokens = order // top_k
        rows = self.comm.all_to_all(x[t0:t1].float()[pair_tokens], send, recv)  # (R, D) rows for my experts
        ids = self.comm.all_to_all(experts[order].unsqueeze(-1), send, recv) - w.first_expert  # (R, 1) local ids
        ones = torch.ones(ids.shape, dtype=torch.float32, device=x.device)
        outputs = self._held_experts(w, rows, Routing(weights=ones, experts=ids))  # (R, D): each row's expert output
        back = self.comm.all_to_all(outputs, recv, send)  # (m·K, D) in `order`
        routed = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        routed[t0:t1].index_add_(0, pair_tokens, back * weights[order].unsqueeze(-1))
        return routed


def _swiglu_hidden(x: torch.Tensor, w: MLPWeights) -> torch.Tensor:
    """x [N, D] → silu(gate(x)) * up(x) [N, I], before the down projection."""
    return swiglu_rows(w.gate_up.mm(x))
