"""The GPT model: a decoder-only transformer, readable top to bottom.

The shapes follow GPT-2 (Radford et al., 2019) as nanoGPT writes it: token embedding (+ learned
position embedding), n_layer pre-norm blocks of causal self-attention and a GELU MLP, a final
LayerNorm and a language-model head that shares its weight with the token embedding. With
`pos_encoding = "rope"` the position embedding is replaced by rotary embeddings on q and k.

Shape letters used in the comments:
    B batch, T new tokens in this forward, P tokens already in the KV cache (the position
    offset), S = P + T keys attended over, C n_embd, H n_head, D head_dim = C / H, V vocab_size.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.config import ModelConfig


class KVCache:
    """Keys and values of the tokens seen so far, so that decoding one token costs O(S), not O(S²).

    One preallocated k and one v tensor per layer, each (B, H, max_len, D). `pos` counts the
    tokens already written; GPT.forward reads it as the position of its first new token, writes
    the new keys and values at [pos, pos + T) and then advances it by T.
    Create it with `model.new_kv_cache(...)`.
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

    def reset(self) -> None:
        # The stale entries need no clearing: attention only ever reads [0, pos).
        self.pos = 0


def rope_cos_sin(head_dim: int, max_len: int, base: float) -> tuple[Tensor, Tensor]:
    """Rotation angles for RoPE (Su et al., 2021): cos and sin, each (max_len, D/2).

    Pair i of a head's channels is rotated by the angle position * base^(-2i/D): fast for the
    first pairs, slow for the last, so dot products q·k depend on the relative distance.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (L, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate q or k (B, H, T, D) by the angles cos, sin (T, D/2).

    "Rotate-half" layout (as GPT-NeoX and LLaMA in Hugging Face): channel i is paired with
    channel i + D/2, not with its neighbour i + 1. Either layout works when used consistently;
    this one needs only two slices instead of a strided reshape.
    """
    half = x.size(-1) // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()  # (B, H, T, D/2) each
    # Rotate in float32 and cast back, so that bfloat16 activations keep accurate angles.
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.use_rope = config.pos_encoding == "rope"
        # q, k and v for all heads in one matmul.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
        cache: tuple[Tensor, Tensor] | None,
        pos: int,
    ) -> Tensor:
        """x (B, T, C) -> (B, T, C). cos/sin (T, D/2) are this step's RoPE angles (None when
        positions are learned); cache is this layer's (k, v) buffers and pos the tokens in them."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # (B, T, C) each
        # Split C into H heads of size D and move heads next to batch: (B, H, T, D).
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cos is not None and sin is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        dropout_p = self.dropout if self.training else 0.0
        if cache is None or pos == 0:
            # Training, or a prefill into an empty cache: the plain causal (T, T) attention.
            if cache is not None:
                cache[0][:, :, :T] = k
                cache[1][:, :, :T] = v
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            cache_k, cache_v = cache
            cache_k[:, :, pos : pos + T] = k
            cache_v[:, :, pos : pos + T] = v
            # (B, H, S, D), cast in case the cache is kept in another dtype than the activations.
            k = cache_k[:, :, : pos + T].to(q.dtype)
            v = cache_v[:, :, : pos + T].to(q.dtype)
            if T == 1:
                # The newest token may look at every cached one: no mask at all.
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
            else:
                # is_causal=True would align the (T, S) mask top-left, i.e. treat the new tokens
                # as positions 0..T-1. They are at pos..pos+T-1: new token i sees keys j <= pos+i.
                key_pos = torch.arange(pos + T, device=x.device)  # (S,)
                query_pos = torch.arange(pos, pos + T, device=x.device)  # (T,)
                mask = key_pos[None, :] <= query_pos[:, None]  # (T, S), True = may attend
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 was trained with the tanh approximation of GELU; keep it to match its weights.
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        # (B, T, C) -> (B, T, 4C) -> (B, T, C)
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One transformer layer. Pre-norm (GPT-2): the residual stream x itself is never normalised,
    which keeps gradients flowing straight through deep stacks."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
        cache: tuple[Tensor, Tensor] | None,
        pos: int,
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), cos, sin, cache, pos)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x


class GPT(nn.Module):
    rope_cos: Tensor  # buffers, present only with pos_encoding = "rope"
    rope_sin: Tensor

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
                ln_f=nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias),
            )
        )
        if config.pos_encoding == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf, 2017): the head scores a hidden state against every token
        # embedding. Saves V*C parameters (38.6M of GPT-2's 124M) and tends to help small models.
        self.transformer["wte"].weight = self.lm_head.weight

        if config.pos_encoding == "rope":
            # One table shared by all layers. Non-persistent: it is a function of the config,
            # recomputed here rather than saved in checkpoints.
            cos, sin = rope_cos_sin(config.head_dim, config.block_size, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, D/2)
            self.register_buffer("rope_sin", sin, persistent=False)  # (block_size, D/2)

        self.apply(self._init_weights)
        # GPT-2's scaled init: every block adds two outputs to the residual stream, so the
        # projections that write into it start smaller, keeping the stream's variance about
        # constant with depth.
        for block in self.blocks:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

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
        # LayerNorm keeps PyTorch's default: weight 1, bias 0.

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters, the tied embedding/head matrix counted once.

        exclude_embeddings leaves out the token and position embeddings (the "non-embedding"
        count of Kaplan et al., 2020). The tied lm_head is the token embedding, so it goes too.
        Works on the meta device: it only reads shapes.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared one once
        if exclude_embeddings:
            n -= sum(p.numel() for p in self._embedding_params())
        return n

    def _embedding_params(self) -> list[Tensor]:
        params: list[Tensor] = [self.lm_head.weight]  # the same Parameter as transformer.wte.weight
        if "wpe" in self.transformer:
            params.append(cast(nn.Embedding, self.transformer["wpe"]).weight)
        return params

    def decay_and_no_decay_params(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Split parameters for AdamW: (weight-decayed, not decayed), each parameter once.

        Decay the matrices of the Linear layers; leave biases and norm gains alone (decaying them
        toward 0 only fights the normalisation) and the embeddings (a row of a rare token gets few
        gradient updates, so decay would shrink it toward nothing). The tied head is the token
        embedding, so it is not decayed either.
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
            n_head=config.n_head,
            max_len=max_len,
            head_dim=config.head_dim,
            device=weight.device if device is None else device,
            dtype=weight.dtype if dtype is None else dtype,
        )

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, V), mean cross-entropy over targets or None).

        targets (B, T) holds the next token at each position; -1 marks positions to ignore.
        With kv_cache, idx continues the cached sequence: its tokens get positions
        [kv_cache.pos, kv_cache.pos + T) and the cache advances by T.
        """
        B, T = idx.shape
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
        cos = sin = None
        if self.config.pos_encoding == "learned":
            positions = torch.arange(pos, pos + T, device=idx.device)  # (T,)
            x = x + self.transformer["wpe"](positions)  # (T, C) broadcast over B
        else:
            cos, sin = self.rope_cos[pos : pos + T], self.rope_sin[pos : pos + T]  # (T, D/2)
        x = self.transformer["drop"](x)

        for i, block in enumerate(self.blocks):
            cache = None if kv_cache is None else (kv_cache.k[i], kv_cache.v[i])
            x = block(x, cos, sin, cache, pos)  # (B, T, C)
        x = self.transformer["ln_f"](x)
        logits = self.lm_head(x)  # (B, T, V)

        if kv_cache is not None:
            kv_cache.pos += T

        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss
