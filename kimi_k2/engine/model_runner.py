"""Run one scheduler step on the model: a packed batch of prefill chunks and decode tokens over the paged pool.

Two ways to run a step, same result (tests/test_engine_exact.py checks it):

* reference — pad the chunks into a `[B, S]` batch and call the model's own `forward` with a `PagedStep`
  cache (`LatentCache` protocol). Simple, but pads every row to the longest chunk and gathers every row's keys
  into a padded tensor per layer.
* fast (default) — the engine's own layer loop over the model's modules on the *packed* tokens `[N, D]` (no
  padding: every projection and expert matmul sees exactly the step's tokens), with weights prepared once:
  kept output-major as the checkpoint stores them (`[out, in]`: MKL runs the 2-row products of batched decode
  faster this way than as `x @ W[in, out]`; docs/engine.md has the measurements), `q_a_proj` and
  `kv_a_proj_with_mqa` fused into one matmul, `gate_proj`/`up_proj` of every MLP fused, routed experts stacked
  in `[E, 2I, D]` / `[E, D, I]` tensors, and the absorbed-attention splits of `kv_b_proj` (`w_uk`, `w_uv`) cut
  once. Routed experts run per (token, expert) pair for 1-2 tokens; above, through PyTorch's grouped matmul
  over the stacked weights (`experts_grouped_mm`: two products per layer whatever the number of experts used;
  batched decode +20% at 16 requests), or sorted by expert where torch lacks it. The checkpoint-named modules
  keep working: their weights become contiguous row-block views into the prepared tensors, so nothing is
  stored twice. Only sampled rows reach the final norm and `lm_head`; a prefill chunk that does not end its
  prompt computes no logits at all.

The fast path keeps the operators per step few. A batch-1 decode step is ~150 matrix products and, around
them, operators whose dispatch costs more than their arithmetic (3-10 µs each on the benchmark CPU). So the
products are `torch.mm` / `addmm` on transposed views prepared once (what `F.linear` runs, without its wrapper
operators; the expert views sit in Python lists, so picking expert e is no operator); `o_proj`, the dense down
projection and the shared expert add into their destination in the same call (`addmm`); each routed expert's
down projection accumulates with `addmm_(alpha=routing weight)`; RoPE is one complex product
(`apply_rope_complex`, equal to the real rotation up to the last bit) and RMSNorm one call (`rms_norm`,
bit-identical). This took the batch-1 step from ~4,000 to ~2,600 ATen operators (docs/engine.md). For the row
counts of `TRANSPOSED_ROW_RANGE` (weights with `TRANSPOSED_MIN_INPUTS`+ inputs), and for `lm_head` with
`LM_HEAD_TRANSPOSED_ROW_RANGE` rows, a product runs as `(W @ xᵀ)ᵀ`, which MKL reads faster there
(bench/gemm_layout.py).

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
from kimi_k2.model.attention import MASKED, MLA
from kimi_k2.model.moe import HAS_GROUPED_MM, MLP, MoE, dispatch_grouped, experts_grouped_mm, swiglu_rows
from kimi_k2.model.rope import apply_rope_complex, rope_cis
from kimi_k2.model.transformer import KimiK2ForCausalLM

NAIVE_PREFILL_MIN_TOKENS = 64
# When a product runs as (W @ xᵀ)ᵀ instead of x @ Wᵀ. MKL picks its kernel and its split over the threads by
# shape: for 12-32 rows (inclusive; 16 concurrent decodes) it reads the medium preset's weights with 1,024+
# inputs (q_a + kv_a, gate+up, the dense down projection) 1.1-2.1× faster transposed, those with 256-512 inputs
# (expert down, q_b, o_proj) mostly slower; 2-8 rows are mostly faster as x @ Wᵀ and 64 rows even or slower
# (bench/gemm_layout.py, docs/engine.md). lm_head, a [V, D] weight, reads faster transposed for 4-32 rows and
# slower at 2 and 64.
TRANSPOSED_ROW_RANGE = (12, 32)
TRANSPOSED_MIN_INPUTS = 1024
LM_HEAD_TRANSPOSED_ROW_RANGE = (3, 32)
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
    """An nn.Linear (or subclass) whose forward is nn.Linear's: `F.linear(x, weight, bias)`."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def _fuse_rows(linears: Sequence[nn.Linear]) -> torch.Tensor:
    """Store the weights of linears that share their input as one tensor [sum(out), in] (checkpoint layout)
    and make each module's weight a contiguous row-block view into it: memory-neutral."""
    fused = torch.cat([m.weight.detach() for m in linears], dim=0) if len(linears) > 1 else linears[0].weight.detach()
    offset = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight.data = fused[offset : offset + rows]
        offset += rows
    return fused


@dataclass(slots=True)
class MLPWeights:
    w13_t: torch.Tensor  # (D, 2I): the transposed view of the fused [gate rows; up rows] weight (2I, D)
    w2_t: torch.Tensor  # (I, D): the transposed view of down_proj's weight (D, I)


@dataclass(slots=True)
class MoEWeights:
    w13: torch.Tensor  # (E, 2I, D)
    w2: torch.Tensor  # (E, D, I)
    w13_t: list[torch.Tensor]  # E views (D, 2I): expert e's w13, transposed (a list: picking one is no operator)
    w2_t: list[torch.Tensor]  # E views (I, D)
    shared: MLPWeights | None


@dataclass(slots=True)
class AttentionWeights:
    w_a_t: torch.Tensor  # (D, q_lora + W), or (D, H*(Q+R) + W) without q LoRA: the fused input projections
    q_split: int  # columns of w_a_t that are the query part
    w_qb_t: torch.Tensor | None  # (q_lora, H*(Q+R)), None without q LoRA
    w_o_t: torch.Tensor  # (H*V, D)
    w_uk: torch.Tensor  # (H, Q, C)
    w_uv_t: torch.Tensor  # (H, C, V)


@dataclass(slots=True)
class LayerWeights:
    attention: AttentionWeights
    mlp: MLPWeights | MoEWeights


def _prepare_mlp(mlp: MLP) -> MLPWeights:
    return MLPWeights(w13_t=_fuse_rows([mlp.gate_proj, mlp.up_proj]).t(), w2_t=_fuse_rows([mlp.down_proj]).t())


def _prepare_moe(moe: MoE) -> MoEWeights:
    experts = list(moe.experts)
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
    shared = _prepare_mlp(moe.shared_experts) if moe.shared_experts is not None else None
    return MoEWeights(w13=w13, w2=w2, w13_t=[w.t() for w in w13], w2_t=[w.t() for w in w2], shared=shared)


def _prepare_attention(attn: MLA) -> AttentionWeights:
    query = attn.q_proj if hasattr(attn, "q_proj") else attn.q_a_proj
    w_a = _fuse_rows([query, attn.kv_a_proj_with_mqa])
    w = attn.kv_b_proj.weight.detach().unflatten(0, (attn.n_heads, attn.nope_dim + attn.v_dim))  # (H, Q+V, C)
    return AttentionWeights(
        w_a_t=w_a.t(),
        q_split=query.weight.shape[0],
        w_qb_t=_fuse_rows([attn.q_b_proj]).t() if hasattr(attn, "q_b_proj") else None,
        w_o_t=_fuse_rows([attn.o_proj]).t(),
        w_uk=w[:, : attn.nope_dim].contiguous(),
        w_uv_t=w[:, attn.nope_dim :].transpose(1, 2).contiguous(),
    )


def fast_path_supported(model: KimiK2ForCausalLM) -> str | None:
    """None if the fast runner can run `model`, else why not (quantized or biased projections)."""
    for name, module in model.named_modules():
        if hasattr(module, "dequantize_weight"):
            return f"{name} is a quantized {type(module).__name__}"
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
    ) -> None:
        if mode not in ("fast", "reference"):
            raise ValueError(f"runner mode {mode!r}: choose 'fast' or 'reference'")
        if prefill_attention not in PREFILL_ATTENTION:
            raise ValueError(f"prefill_attention {prefill_attention!r}: choose one of {PREFILL_ATTENTION}")
        self.model, self.pool, self.mode, self.prefill_attention = model, pool, mode, prefill_attention
        self.cfg = model.config
        self.layers: list[LayerWeights] = []
        self.lm_head: torch.Tensor | None = None
        if mode == "fast":
            why = fast_path_supported(model)
            if why is not None:
                raise ValueError(f"the fast runner cannot run this model ({why}); use mode='reference'")
            with torch.no_grad():
                tied = model.lm_head.weight is model.model.embed_tokens.weight
                self.lm_head = None if tied else _fuse_rows([model.lm_head])  # (V, D)
                for layer in model.model.layers:
                    mlp = layer.mlp
                    self.layers.append(
                        LayerWeights(
                            attention=_prepare_attention(layer.self_attn),
                            mlp=_prepare_moe(mlp) if isinstance(mlp, MoE) else _prepare_mlp(mlp),
                        )
                    )

    @torch.inference_mode()
    def execute(self, chunks: Sequence[StepChunk]) -> torch.Tensor:
        if self.mode == "reference":
            return self._execute_reference(chunks)
        meta = build_meta(chunks, self.pool.block_size).to(self.pool.kv.device)
        logits = self._forward(meta)
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
    def _forward(self, meta: StepMeta) -> torch.Tensor:
        model = self.model
        h = model.model.embed_tokens(meta.input_ids)  # (N, D)
        cis = rope_cis(*model.rope(meta.positions))  # (N, R/2) complex
        for layer_idx, (layer, weights) in enumerate(zip(model.model.layers, self.layers)):
            attended = self._attention(layer_idx, layer.self_attn, weights.attention, layer.input_layernorm(h), cis, meta)
            h = _add_product(h, attended, weights.attention.w_o_t)  # h + o_proj(attended)  (N, D)
            x = layer.post_attention_layernorm(h)
            mlp = weights.mlp
            if isinstance(mlp, MoEWeights):
                h = h + self._moe(layer.mlp, mlp, x)
            else:
                h = _add_product(h, _swiglu_hidden(x, mlp), mlp.w2_t)  # h + down(silu(gate) * up)
        if meta.logit_rows.numel() == 0:
            return h.new_zeros(0, model.config.vocab_size, dtype=torch.float32)
        last = model.model.norm(h if meta.all_rows_sampled else h[meta.logit_rows])  # (n, D)
        lm_head = self.lm_head if self.lm_head is not None else model.lm_head.weight  # (V, D)
        low, high = LM_HEAD_TRANSPOSED_ROW_RANGE
        return _matmul(last, lm_head.t(), transposed=low <= last.shape[0] <= high).float()  # (n, V)

    def _attention(
        self, layer_idx: int, attn: MLA, w: AttentionWeights, x: torch.Tensor, cis: torch.Tensor, meta: StepMeta
    ) -> torch.Tensor:
        """x [N, D] (normed) → attention output [N, H*V] (before o_proj); writes the step's latents into the pool."""
        n_tok = x.shape[0]
        heads, q_dim, c_dim = attn.n_heads, attn.nope_dim, attn.kv_lora_rank
        a = _product(x, w.w_a_t)  # (N, q_split + W)
        q = a[:, : w.q_split]
        if w.w_qb_t is not None:
            q = _product(attn.q_a_layernorm(q), w.w_qb_t)
        q = q.view(n_tok, heads, -1)  # (N, H, Q+R)
        q_nope, q_pe = q[..., :q_dim], apply_rope_complex(q[..., q_dim:], cis.unsqueeze(1))  # (N,H,Q), (N,H,R)
        c_kv = attn.kv_a_layernorm(a[:, w.q_split : w.q_split + c_dim])
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
                out[rows] = self._naive(attn, q_nope[rows], q_pe[rows], kv.index_select(0, key_slots), mask)
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
    def _naive(attn: MLA, q_nope: torch.Tensor, q_pe: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """One prefill chunk, naive: expand keys [T, W] to per-head K/V, fused SDPA. Returns [S, H, V]."""
        t_len = keys.shape[0]
        c_dim = attn.kv_lora_rank
        kv = attn.kv_b_proj(keys[:, :c_dim]).view(t_len, attn.n_heads, attn.nope_dim + attn.v_dim)  # (T, H, Q+V)
        k_nope, v = kv[..., : attn.nope_dim], kv[..., attn.nope_dim :]
        k_pe = keys[:, c_dim:].unsqueeze(1).expand(t_len, attn.n_heads, attn.rope_dim)
        k = torch.cat([k_nope, k_pe], dim=-1).transpose(0, 1)  # (H, T, Q+R)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(0, 1)  # (H, S, Q+R)
        out = F.scaled_dot_product_attention(q, k, v.transpose(0, 1), attn_mask=mask, scale=attn.softmax_scale)
        return out.transpose(0, 1)  # (S, H, V)

    # ------------------------------------------------------------------ experts
    @staticmethod
    def _moe(moe: MoE, w: MoEWeights, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] → routed experts (stacked weights) + shared expert, [N, D] in x's dtype."""
        routing = moe.gate(x)
        n_tok = x.shape[0]
        if n_tok <= 2:  # decode: each (token, expert) pair on its own, straight from the stacked weights
            out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
            experts, weights = routing.experts.tolist(), routing.weights.tolist()
            for t in range(n_tok):
                xt, acc = (x, out) if n_tok == 1 else (x[t : t + 1], out[t : t + 1])
                for e, weight in zip(experts[t], weights[t]):
                    _accumulate_product(acc, swiglu_rows(torch.mm(xt, w.w13_t[e])), w.w2_t[e], weight)
        elif HAS_GROUPED_MM:  # one grouped product per projection, whatever the number of experts used
            out = experts_grouped_mm(x, routing, w.w13, w.w2)
        else:

            def run_expert(e: int, rows: torch.Tensor) -> torch.Tensor:
                return _product(swiglu_rows(_product(rows, w.w13_t[e])), w.w2_t[e])  # (n, D)

            out = dispatch_grouped(x, routing, w.w13.shape[0], run_expert)
        out = out.to(x.dtype)
        if w.shared is not None:  # routed + shared, added in place (out is this call's own tensor)
            _accumulate_product(out, _swiglu_hidden(x, w.shared), w.shared.w2_t)
        return out


def _swiglu_hidden(x: torch.Tensor, w: MLPWeights) -> torch.Tensor:
    """x [N, D] → silu(gate(x)) * up(x) [N, I], before the down projection."""
    return swiglu_rows(_product(x, w.w13_t))


def _use_transposed(x: torch.Tensor, weight_t: torch.Tensor) -> bool:
    """x [M, K], weight_t [K, N]: whether `TRANSPOSED_ROW_RANGE` and `TRANSPOSED_MIN_INPUTS` pick (W @ xᵀ)ᵀ."""
    return TRANSPOSED_ROW_RANGE[0] <= x.shape[0] <= TRANSPOSED_ROW_RANGE[1] and weight_t.shape[0] >= TRANSPOSED_MIN_INPUTS


def _matmul(x: torch.Tensor, weight_t: torch.Tensor, transposed: bool) -> torch.Tensor:
    """x [M, K] · weight_t [K, N] → [M, N] (contiguous), weight_t the transposed view of an output-major weight
    [N, K]: as `x @ Wᵀ`, or when `transposed` as `(W @ xᵀ)ᵀ` — the same dot products, each summed in the order
    MKL's kernel for that form uses."""
    if transposed:
        return torch.mm(weight_t.t(), x.t()).t().contiguous()
    return torch.mm(x, weight_t)


def _product(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """`_matmul` in the form `_use_transposed` picks for the shapes."""
    return _matmul(x, weight_t, _use_transposed(x, weight_t))


def _add_product(acc: torch.Tensor, x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """acc + x · weight_t as a new tensor [M, N] (one `addmm`, or its transposed form); acc and x share a dtype
    (the residual stream and a projection input, both the model's)."""
    if _use_transposed(x, weight_t):
        return torch.addmm(acc.t(), weight_t.t(), x.t()).t().contiguous()
    return torch.addmm(acc, x, weight_t)


def _accumulate_product(acc: torch.Tensor, rows: torch.Tensor, weight_t: torch.Tensor, alpha: float = 1.0) -> None:
    """acc += alpha * rows · weight_t, in place, accumulating in acc's dtype."""
    if rows.dtype == acc.dtype and not _use_transposed(rows, weight_t):
        acc.addmm_(rows, weight_t, alpha=alpha)
    else:
        acc.add_(_product(rows, weight_t).to(acc.dtype), alpha=alpha)
