"""The GPT model: a decoder-only transformer, readable top to bottom.

The default shape is GPT-2 (Radford et al., 2019) as nanoGPT writes it: token embedding +
learned position embedding, n_layer pre-norm blocks of causal self-attention and a GELU MLP, a
final LayerNorm and a language-model head that shares its weight with the token embedding.
Every choice Llama-style models make differently is a ModelConfig key, used in one place below:

    pos_encoding   learned | sinusoidal (added to the embeddings) | rope (rotates q and k)
    norm           layernorm | rmsnorm, always before each sublayer; qk_norm on q and k
    mlp            gelu | swiglu | relu2, hidden width ffn_hidden
    n_kv_head      fewer key/value heads than query heads: grouped-query / multi-query
    sliding_window each token attends to at most this many recent tokens
    bias, tie_embeddings, logit_softcap, activation_checkpointing

Shape letters used in the comments:
    B batch, T new tokens in this forward, P tokens already in the KV cache (the position
    offset), S = P + T keys attended over, C n_embd, H n_head, K n_kv_head, D head_dim = C / H,
    F ffn_hidden, V vocab_size.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from scratchlm.model.config import ModelConfig
from scratchlm.model.fused_loss import linear_cross_entropy
from scratchlm.model.norms import RMSNorm, make_norm
from scratchlm.model.positional import (
    apply_rope,
    llama3_inv_freq,
    rope_cos_sin,
    rope_inv_freq,
    sinusoidal_encoding,
)


class KVCache:
    """Keys and values of the tokens seen so far, so that decoding one token costs O(S), not O(S²).

    One preallocated k and one v tensor per layer, each (B, K, max_len, D): with grouped-query
    attention only the K key/value heads are stored, which is where GQA saves its memory.
    `pos` counts the slots already written; GPT.forward writes the new keys and values at
    [pos, pos + T) and then advances it by T. Create it with `model.new_kv_cache(...)`.

    A batch of prompts of different lengths is left-padded to one length (`set_left_padding`):
    row b's first pad[b] slots hold padding that no query attends to, and its tokens get the
    positions slot - pad[b], so each row sees exactly the positions and keys it would alone.

    Continuous batching needs rows that come and go: `independent_rows()` makes every row a
    sequence of its own, `lengths[b]` slots long. A row is prefilled through `row(b)` (a view of
    its slots, as if it were alone), and a decode step then gives every row one new token,
    written at its own slot lengths[b] and placed at that position.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = (batch_size, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.batch_size = batch_size
        self.max_len = max_len
        self.pos = 0
        self.pad: Tensor | None = None  # (B,) left-padding slots per row; None: no padding
        # (B, 1, 1, max_len) bool, True where a key slot is real (not padding): made once, so a
        # decode step's mask is a slice of it rather than a new tensor.
        self.key_valid: Tensor | None = None
        # (B,) long: each row's own length, for rows that are independent sequences; None: the
        # rows share `pos`.
        self.lengths: Tensor | None = None

    def reset(self) -> None:
        # The stale entries need no clearing: attention only ever reads [0, pos).
        self.pos = 0
        self.pad = self.key_valid = None
        if self.lengths is not None:
            self.lengths.zero_()

    def independent_rows(self) -> KVCache:
        """Make each row a sequence of its own (all empty); returns self."""
        self.reset()
        self.lengths = torch.zeros(self.batch_size, dtype=torch.long, device=self.k[0].device)
        return self

    def row(self, b: int) -> KVCache:
        """Row b's slots as a cache of one empty sequence: prefill through it, then
        `lengths[b]` = the tokens written. Its tensors are views, so writes land here."""
        view = KVCache.__new__(KVCache)
        view.k = [k[b : b + 1] for k in self.k]
        view.v = [v[b : b + 1] for v in self.v]
        view.batch_size, view.max_len, view.pos = 1, self.max_len, 0
        view.pad = view.key_valid = view.lengths = None
        return view

    def first_rows(self, n: int) -> KVCache:
        """The first n rows, as a cache of independent rows that shares their storage (a decode
        step over the rows in use only)."""
        if self.lengths is None:
            raise ValueError("first_rows needs a cache of independent rows (independent_rows())")
        view = KVCache.__new__(KVCache)
        view.k = [k[:n] for k in self.k]
        view.v = [v[:n] for v in self.v]
        view.batch_size, view.max_len, view.pos = n, self.max_len, 0
        view.pad = view.key_valid = None
        view.lengths = self.lengths[:n]
        return view

    def move_row(self, source: int, dest: int) -> None:
        """Copy row `source` (its written slots and length) over row `dest`."""
        if self.lengths is None:
            raise ValueError("move_row needs a cache of independent rows (independent_rows())")
        n = int(self.lengths[source])
        for k, v in zip(self.k, self.v, strict=True):
            k[dest, :, :n] = k[source, :, :n]
            v[dest, :, :n] = v[source, :, :n]
        self.lengths[dest] = n

    def grow(self, max_len: int) -> None:
        """Room for max_len slots per row, keeping what is written (a longer copy)."""
        if max_len <= self.max_len:
            return
        for layer in (self.k, self.v):
            for i, old in enumerate(layer):
                new = old.new_zeros(*old.shape[:2], max_len, old.size(3))
                new[:, :, : self.max_len] = old
                layer[i] = new
        self.max_len = max_len

    def set_left_padding(self, pad: list[int]) -> None:
        """Declare that row b starts with pad[b] padding slots (call before the prefill)."""
        if len(pad) != self.batch_size:
            raise ValueError(f"{len(pad)} padding counts for a batch of {self.batch_size}")
        if not any(pad):
            self.pad = self.key_valid = None
            return
        device = self.k[0].device
        self.pad = torch.tensor(pad, device=device)
        slots = torch.arange(self.max_len, device=device)
        self.key_valid = (slots >= self.pad[:, None])[:, None, None, :]


def attention_mask(
    pos: int, T: int, window: int, device: torch.device | None = None
) -> Tensor | None:
    """Which keys each new query may see: (T, S) bool, True = attend; None when SDPA's own
    `is_causal` (pos = 0, no window) or no mask at all (one new token, no window) is exact.

    New token i sits at position pos + i and sees key j when j <= pos + i (causal) and, with a
    sliding window W, j > pos + i - W (only the W most recent tokens, itself included).
    """
    if window == 0 and (pos == 0 or T == 1):
        return None
    key_pos = torch.arange(pos + T, device=device)  # (S,)
    query_pos = torch.arange(pos, pos + T, device=device)[:, None]  # (T, 1)
    mask = key_pos <= query_pos  # (T, S)
    if window:
        mask &= key_pos > query_pos - window
    return mask


def padded_attention_mask(cache: KVCache, T: int, window: int) -> Tensor:
    """attention_mask for a left-padded batch: (B, 1, T, S) bool, True = attend.

    As attention_mask, and row b's pad[b] padding slots are hidden from every query. A padding
    query still sees itself: a row with no visible key would make softmax 0/0 = NaN, and a NaN
    value in the cache poisons even the rows that give it weight 0 (0 · NaN = NaN).
    """
    assert cache.pad is not None and cache.key_valid is not None
    pos, S = cache.pos, cache.pos + T
    if T == 1 and not window:
        return cache.key_valid[..., :S]  # one new token: causal already; a view, no new tensor
    device = cache.pad.device
    key_slot = torch.arange(S, device=device)  # (S,)
    query_slot = torch.arange(pos, S, device=device)[:, None]  # (T, 1)
    mask = (key_slot <= query_slot) & (cache.key_valid[..., :S] | (key_slot == query_slot))
    if window:
        mask &= key_slot > query_slot - window  # positions and slots differ by pad[b] alike
    return mask  # (B, 1, T, S)


def independent_rows_mask(lengths: Tensor, S: int, window: int) -> Tensor:
    """Which of S key slots each row's one new token sees, in a cache of independent rows:
    (B, 1, 1, S) bool. Row b's new token sits at slot and position lengths[b]; it sees its
    slots up to itself, and with a sliding window W only the W most recent."""
    key_slot = torch.arange(S, device=lengths.device)  # (S,)
    query = lengths[:, None]  # (B, 1)
    mask = key_slot <= query  # (B, S)
    if window:
        mask &= key_slot > query - window
    return mask[:, None, None, :]


def decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention of one new query per row, q (B, H, 1, D), over k, v (B, K, S, D) -> (B, H, 1, D).

    Two small matmuls and a softmax. Same result as SDPA, but SDPA's CPU kernel has a large
    fixed cost per call that dominates a single query (most of a decode step's attention time
    in SmolLM2, benchmarks/inference.py), so decoding does this itself. The H query heads are
    grouped by the key/value head they share (GQA), which reads each cached head once instead
    of repeating it H/K times.
    """
    B, H, _, D = q.shape
    K, S = k.size(1), k.size(2)
    q = q.view(B, K, H // K, D)  # (B, K, G, D): head h uses kv head h // G, as SDPA's enable_gqa
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(D))  # (B, K, G, S)
    if mask is not None:
        # (1, S) from attention_mask or (B, 1, 1, S) from padded_attention_mask
        scores = scores.masked_fill(~mask.view(-1, 1, 1, S), float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).type_as(v)
    return torch.matmul(weights, v).view(B, H, 1, D)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.head_dim = config.head_dim
        self.window = config.sliding_window
        self.dropout = config.dropout
        # q (H heads), k and v (K heads each) in one matmul: C + 2·K·D outputs. With K = H this
        # is GPT-2's c_attn of 3C; fewer key/value heads shrink it (and the KV cache).
        kv_width = config.kv_heads * config.head_dim
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * kv_width, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # QK-norm: normalising each head's q and k bounds the attention logits, which keeps
        # the softmax from saturating when training with large learning rates.
        self.q_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
        cache: tuple[Tensor, Tensor] | None,
        pos: int | Tensor,
        mask: Tensor | None,
    ) -> Tensor:
        """x (B, T, C) -> (B, T, C). cos/sin (T, D/2), or (B, 1, T, D/2) with per-row positions,
        are this step's RoPE angles (None without RoPE); cache is this layer's (k, v) buffers
        and pos the slots already in them, one int for all rows, or (B,) for independent rows
        (one new token each, written at its row's slot pos[b]); mask (T, S) or (B, 1, T, S),
        True = attend, or None for plain causal attention."""
        B, T, _ = x.shape
        H, K, D = self.n_head, self.n_kv_head, self.head_dim
        # Split channels into H query, K key and K value heads, heads next to batch.
        qkv = self.c_attn(x).view(B, T, H + 2 * K, D).transpose(1, 2)  # (B, H + 2K, T, D)
        qk, v = qkv.split([H + K, K], dim=1)  # queries and keys get the same treatment
        if self.q_norm is not None and self.k_norm is not None:
            q, k = qk.split([H, K], dim=1)
            qk = torch.cat((self.q_norm(q), self.k_norm(k)), dim=1)
        if cos is not None and sin is not None:
            qk = apply_rope(qk, cos, sin)  # one call rotates all H + K heads
        q, k = qk.split([H, K], dim=1)  # (B, H, T, D), (B, K, T, D)

        if isinstance(pos, Tensor):
            assert cache is not None and mask is not None and T == 1
            rows = torch.arange(B, device=x.device)
            cache[0][rows, :, pos] = k[:, :, 0]  # (B, K, D) into each row's own slot
            cache[1][rows, :, pos] = v[:, :, 0]
            S = mask.size(-1)
            k, v = cache[0][:, :, :S].to(q.dtype), cache[1][:, :, :S].to(q.dtype)
            y = decode_attention(q, k, v, mask)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, H * D))
        if cache is not None:
            cache_k, cache_v = cache
            cache_k[:, :, pos : pos + T] = k
            cache_v[:, :, pos : pos + T] = v
            if pos > 0:
                # Attend over everything cached: (B, K, S, D), cast in case the cache is kept
                # in another dtype than the activations.
                k = cache_k[:, :, : pos + T].to(q.dtype)
                v = cache_v[:, :, : pos + T].to(q.dtype)
        if T == 1 and pos > 0 and not self.training:
            y = decode_attention(q, k, v, mask)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, H * D))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            # Without a mask, a prefill from position 0 is plain causal attention; a single
            # new token may look at every key, so it needs no mask at all.
            is_causal=mask is None and T > 1,
            # Each group of H/K query heads shares one key/value head.
            enable_gqa=K != H,
        )  # (B, H, T, D)
        # Heads side by side again: (B, T, H * D), which is C unless tensor parallelism gave
        # this rank only some of the heads (train/sharding.py).
        y = y.transpose(1, 2).contiguous().view(B, T, H * D)
        return self.resid_dropout(self.c_proj(y))


class SplitLinear(nn.Linear):
    """A Linear layer whose output is two halves read separately: SwiGLU's gate and up.

    Checkpoints store both input matrices of a SwiGLU MLP stacked in one weight (2F, C), gate
    rows first. `halves` runs one matmul per half (each a contiguous block of rows) rather than
    one matmul and a split, so silu reads a contiguous tensor, about twice as fast as a strided
    half. Anything standing in for this layer (a quantised copy) offers `halves` too.
    """

    # Tensor parallelism (train/sharding.py) turns this off: there each rank's shard of the
    # weight holds its own rows of both halves, and the matmul must go through forward, where
    # the sharding hooks are.
    split_matmul = True

    def halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.split_matmul:
            first, second = self(x).chunk(2, dim=-1)
            return first, second
        w_first, w_second = self.weight.chunk(2)  # (F, C) each
        b_first, b_second = (None, None) if self.bias is None else self.bias.chunk(2)
        return F.linear(x, w_first, b_first), F.linear(x, w_second, b_second)  # (B, T, F) each


class MLP(nn.Module):
    """The position-wise feed-forward network: (B, T, C) -> (B, T, F) -> (B, T, C).

    gelu:   c_proj(gelu(c_fc(x))), GPT-2.
    relu2:  c_proj(relu(c_fc(x))²), "Primer" (So et al., 2021), cheap and sparse.
    swiglu: c_proj(silu(gate) * up) with gate, up = c_fc.halves(x) (Shazeer, 2020; Llama):
            c_fc holds both input matrices, stacked (SplitLinear).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        hidden = config.ffn_hidden
        n_in = 2 * hidden if config.mlp == "swiglu" else hidden
        self.c_fc = SplitLinear(config.n_embd, n_in, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "swiglu":
            gate, up = self.c_fc.halves(x)  # (B, T, F) each
            h = F.silu(gate) * up
        elif self.kind == "relu2":
            h = F.relu(self.c_fc(x)).square()  # (B, T, F)
        else:
            # GPT-2 was trained with the tanh approximation of GELU; keep it to match its weights.
            h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, F)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    """One transformer layer. Pre-norm (GPT-2, Llama): the residual stream x itself is never
    normalised, which keeps gradients flowing straight through deep stacks."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
        cache: tuple[Tensor, Tensor] | None,
        pos: int | Tensor,
        mask: Tensor | None = None,
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), cos, sin, cache, pos, mask)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x


class GPT(nn.Module):
    # Tables derived from the config, kept as non-persistent buffers (never in checkpoints).
    rope_cos: Tensor  # (block_size, D/2), with pos_encoding = "rope"
    rope_sin: Tensor
    pos_table: Tensor  # (block_size, C), with pos_encoding = "sinusoidal"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        # Submodule names follow GPT-2 (transformer.wte, transformer.h.0.attn.c_attn, ...), so
        # its checkpoints map onto this model name for name (HF's Conv1D weights transposed).
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=make_norm(config),
            )
        )
        if config.pos_encoding == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()
        if self.lm_head.weight.is_meta:
            # Shapes only: whoever fills in the weights (loading.py) calls init_buffers then.
            return
        self.init_buffers()

        self.apply(self._init_weights)
        # GPT-2's scaled init: every block adds two outputs to the residual stream, so the
        # projections that write into it start smaller, keeping the stream's variance about
        # constant with depth.
        for block in self.blocks:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def tie_weights(self) -> None:
        """Weight tying (Press & Wolf, 2017): the head scores a hidden state against every token
        embedding. Saves V*C parameters (38.6M of GPT-2's 124M) and tends to help small models.
        Called again after loading weights by assignment, which replaces the Parameters."""
        if self.config.tie_embeddings:
            self.transformer["wte"].weight = self.lm_head.weight

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the position tables from the config on `device` (default: the current
        default device): at construction, and after a model built on the meta device got its
        weights by assignment (these buffers are not in checkpoints)."""
        with torch.device(device or torch.get_default_device()):
            self._init_buffers()

    def _init_buffers(self) -> None:
        config = self.config
        if config.pos_encoding == "rope":
            inv_freq = rope_inv_freq(config.head_dim, config.rope_base)
            if config.rope_scaling == "llama3":
                inv_freq = llama3_inv_freq(
                    inv_freq,
                    config.rope_factor,
                    config.rope_low_freq_factor,
                    config.rope_high_freq_factor,
                    config.rope_original_context,
                )
            cos, sin = rope_cos_sin(inv_freq, config.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, D/2)
            self.register_buffer("rope_sin", sin, persistent=False)
        elif config.pos_encoding == "sinusoidal":
            table = sinusoidal_encoding(config.block_size, config.n_embd)
            self.register_buffer("pos_table", table, persistent=False)  # (block_size, C)

    @property
    def blocks(self) -> list[Block]:
        return cast(list[Block], self.transformer["h"])  # a ModuleList, typed for readers

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # LayerNorm and RMSNorm keep their own init: weight 1, bias 0.

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters, a tied embedding/head matrix counted once.

        exclude_embeddings leaves out the token and position embeddings (the "non-embedding"
        count of Kaplan et al., 2020) and the head's matrix. Works on the meta device: it only
        reads shapes.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared one once
        if exclude_embeddings:
            n -= sum(p.numel() for p in self._embedding_params())
        return n

    def _embedding_params(self) -> list[Tensor]:
        params: list[Tensor] = [cast(nn.Embedding, self.transformer["wte"]).weight]
        if self.lm_head.weight is not params[0]:  # untied: the head is a matrix of its own
            params.append(self.lm_head.weight)
        if "wpe" in self.transformer:
            params.append(cast(nn.Embedding, self.transformer["wpe"]).weight)
        return params

    def decay_and_no_decay_params(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Split parameters for AdamW: (weight-decayed, not decayed), each parameter once.

        Decay the matrices of the Linear layers; leave biases and norm gains alone (decaying them
        toward 0 only fights the normalisation) and the embeddings (a row of a rare token gets few
        gradient updates, so decay would shrink it toward nothing). The head goes with the
        embeddings, tied or not.
        """
        embeddings = {id(p) for p in self._embedding_params()}
        decay, no_decay = [], []
        for p in self.parameters():  # shared parameters come once
            if p.dim() >= 2 and id(p) not in embeddings:
                decay.append(p)
            else:
                no_decay.append(p)
        return decay, no_decay

    def new_kv_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to max_len (default block_size)
        tokens, on the model's device and in its parameter dtype unless told otherwise."""
        config = self.config
        max_len = config.block_size if max_len is None else max_len
        if not 1 <= max_len <= config.block_size:
            raise ValueError(
                f"max_len must be in [1, block_size={config.block_size}], got {max_len}"
            )
        weight = self.lm_head.weight
        return KVCache(
            n_layer=config.n_layer,
            batch_size=batch_size,
            n_head=config.kv_heads,  # only the key/value heads are cached
            max_len=max_len,
            head_dim=config.head_dim,
            device=weight.device if device is None else device,
            dtype=weight.dtype if dtype is None else dtype,
        )

    def hidden_states(self, idx: Tensor, kv_cache: KVCache | None = None) -> Tensor:
        """idx (B, T) -> the last block's output (B, T, C), before the final norm and the head.
        With kv_cache, as in forward; the cache advances by T."""
        B, T = idx.shape
        if kv_cache is not None and kv_cache.lengths is not None:
            return self._independent_rows_step(idx, kv_cache)
        pos = 0 if kv_cache is None else kv_cache.pos
        if T < 1:
            raise ValueError("forward needs at least one token")
        if pos + T > self.config.block_size:
            # The caller crops or slides its context; silently reading past wpe/RoPE is a bug.
            raise ValueError(
                f"sequence of {pos + T} tokens ({pos} cached + {T} new) is longer than "
                f"block_size={self.config.block_size}"
            )
        if kv_cache is not None:
            if pos + T > kv_cache.max_len:
                raise ValueError(f"KV cache full: {pos} + {T} tokens > max_len={kv_cache.max_len}")
            if kv_cache.batch_size != B:
                raise ValueError(
                    f"batch of {B} but the KV cache was made for {kv_cache.batch_size}"
                )

        x = self.transformer["wte"](idx)  # (B, T, C)
        pad = None if kv_cache is None else kv_cache.pad
        positions: Tensor | slice
        if pad is None:
            positions = slice(pos, pos + T)  # the same for every row
        else:
            # Left padding: row b's real tokens start at slot pad[b], position 0. Padding slots
            # get position 0 too (any valid index; nothing attends to them).
            slots = torch.arange(pos, pos + T, device=idx.device)
            positions = (slots - pad[:, None]).clamp_(min=0)  # (B, T)
        cos = sin = None
        if self.config.pos_encoding == "learned":
            wpe = cast(nn.Embedding, self.transformer["wpe"]).weight
            x = x + wpe[positions]  # (T, C) broadcast over B, or (B, T, C)
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pos_table[positions].to(x.dtype)  # (T, C) or (B, T, C)
        else:
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (T, D/2)
            if pad is not None:
                cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D/2): broadcast over heads
        x = self.transformer["drop"](x)
        # One mask for all layers, made here rather than in each of them.
        mask: Tensor | None
        if pad is not None and kv_cache is not None:
            mask = padded_attention_mask(kv_cache, T, self.config.sliding_window)
        else:
            mask = attention_mask(pos, T, self.config.sliding_window, idx.device)

        recompute = (
            self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        )
        for i, block in enumerate(self.blocks):
            cache = None if kv_cache is None else (kv_cache.k[i], kv_cache.v[i])
            if recompute and cache is None:
                # Keep only the block's input; its inner activations are recomputed in backward.
                x = cast(
                    Tensor, checkpoint(block, x, cos, sin, None, pos, mask, use_reentrant=False)
                )
            else:
                x = block(x, cos, sin, cache, pos, mask)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.pos += T
        return x

    def _independent_rows_step(self, idx: Tensor, kv_cache: KVCache) -> Tensor:
        """hidden_states for a cache of independent rows: idx (B, 1), row b's new token at its
        own position lengths[b] -> (B, 1, C); every length advances by 1."""
        B, T = idx.shape
        lengths = kv_cache.lengths
        assert lengths is not None
        if T != 1 or kv_cache.batch_size != B:
            raise ValueError(
                f"a cache of independent rows takes one new token per row ({kv_cache.batch_size}"
                f" rows), got {B} x {T}; prefill a row through cache.row(b)"
            )
        S = int(lengths.max()) + 1  # the slots any row attends over, its new one included
        if min(kv_cache.max_len, self.config.block_size) < S:
            raise ValueError(
                f"a row would hold {S} tokens: more than the cache ({kv_cache.max_len}) or the "
                f"context (block_size={self.config.block_size}) holds"
            )
        positions = lengths[:, None]  # (B, 1)
        x = self.transformer["wte"](idx)  # (B, 1, C)
        cos = sin = None
        if self.config.pos_encoding == "learned":
            x = x + cast(nn.Embedding, self.transformer["wpe"]).weight[positions]
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pos_table[positions].to(x.dtype)
        else:
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]
        mask = independent_rows_mask(lengths, S, self.config.sliding_window)  # (B, 1, 1, S)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, (kv_cache.k[i], kv_cache.v[i]), lengths, mask)  # (B, 1, C)
        lengths += 1
        return x

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        kv_cache: KVCache | None = None,
        last_only: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, V), mean cross-entropy over targets or None).

        targets (B, T) holds the next token at each position; -1 marks positions to ignore.
        With kv_cache, idx continues the cached sequence: its tokens get positions
        [kv_cache.pos, kv_cache.pos + T) (less each row's left padding) and the cache advances
        by T. last_only computes the logits of the last position only, (B, 1, V): all that
        generation needs, and it spares a prefill the head's T x C x V matmul.
        """
        x = self.hidden_states(idx, kv_cache)  # (B, T, C)
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        logits = self.head(x)  # (B, T, V)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss

    def head(self, x: Tensor) -> Tensor:
        """Hidden states (..., C) from hidden_states -> logits (..., V): the final norm and the
        language-model head. Evaluation applies it to the positions it scores only."""
        logits = self.lm_head(self.transformer["ln_f"](x))
        if self.config.logit_softcap:
            # A smooth clamp to (-cap, cap): no single logit can grow without bound (Gemma 2).
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def training_loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """The mean cross-entropy forward(idx, targets) computes, without its (B, T, V) logits.

        The head and the loss are fused and taken a chunk of positions at a time
        (model/fused_loss.py): the same loss and gradients, less memory traffic and memory.
        This is what training calls with train.fused_loss (the default).
        """
        x = self.transformer["ln_f"](self.hidden_states(idx))  # (B, T, C)
        return linear_cross_entropy(
            x.view(-1, x.size(-1)),
            self.lm_head.weight,
            targets.reshape(-1),
            softcap=self.config.logit_softcap,
        )
