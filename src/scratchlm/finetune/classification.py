"""A text classifier on a pretrained GPT: a linear head on the hidden state of the last real
token of each text.

Attention is causal, so the last token is the only one that has seen the whole text: its hidden
state (after the final norm, as the language-model head would read it) summarises the text, and
a Linear(n_embd, num_classes) maps it to one logit per class (Radford et al., 2018; Raschka,
*Build a Large Language Model (From Scratch)*, chapter 6).

Padding. A batch of texts of different lengths is padded to one length, on the right or the
left (attention_mask: 1 = real token, 0 = padding, as Hugging Face writes it). The classifier
first moves each row's real tokens to the front (a stable sort by the mask), so every batch is
right-padded when it reaches the model: real tokens get the positions 0, 1, ... they would have
alone, no real token can attend to a pad that follows it (causal), and the last real token is at
length - 1. Left and right padding therefore give the same logits, bit for bit, and the model
needs no padding mask of its own.

Which parameters train (set_trainable):

    head         the new head only: the backbone is a fixed feature extractor (fast, small)
    last_blocks  the head, the last k transformer blocks and the final norm (the book's choice)
    all          every parameter (an untied language-model head is unused and stays frozen)
    lora         the head, and low-rank adapters that `add_adapters` puts on the frozen
                 backbone (finetune/lora.py): every original weight stays frozen
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.core.errors import ScratchLMError
from scratchlm.finetune.config import TRAINABLE_MODES, TrainableMode
from scratchlm.model.gpt import GPT


class SequenceClassifier(nn.Module):
    """A GPT backbone and a linear head on each text's last real token: (B, T) -> (B, K)."""

    def __init__(self, backbone: GPT, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(backbone.config.n_embd, num_classes)
        # GPT-2's init for a Linear: small logits at the start, so the first loss is ~ln K.
        nn.init.normal_(self.score.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.score.bias)

    @property
    def num_classes(self) -> int:
        return self.score.out_features

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Token ids (B, T), padded on either side, and their mask (B, T) (1 = real token;
        None: no padding) -> class logits (B, K)."""
        return self.score(self.dropout(self.features(idx, attention_mask)))

    def features(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The final-norm hidden state of each row's last real token: (B, C)."""
        idx, lengths = right_align(idx, attention_mask)
        idx = idx[:, : int(lengths.max())]  # columns of padding only: no need to compute them
        hidden = self.backbone.hidden_states(idx)  # (B, T, C)
        last = hidden[torch.arange(idx.size(0), device=idx.device), lengths - 1]  # (B, C)
        return cast(Tensor, self.backbone.transformer["ln_f"](last))

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Every parameter (a tied one once), as GPT.num_parameters counts them: the training
        log reports it and estimates FLOPs from the non-embedding count."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(p.numel() for p in self.backbone._embedding_params())
        return n

    # The training engine's optimizer (train/optimizer.py) asks a model for these two lists;
    # here they hold only the parameters that train (set_trainable).
    def decay_and_no_decay_params(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        embeddings = {id(p) for p in self._embedding_params()}
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            if p.dim() >= 2 and id(p) not in embeddings:
                decay.append(p)
            else:
                no_decay.append(p)
        return decay, no_decay

    def _embedding_params(self) -> list[Tensor]:
        return [p for p in self.backbone._embedding_params() if p.requires_grad]


def right_align(idx: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Each row's real tokens moved to the front, in order: (idx (B, T), lengths (B,)).

    With attention_mask None every token is real. A row without any real token is a caller's
    bug (an empty text), refused here rather than read as garbage.
    """
    B, T = idx.shape
    if attention_mask is None:
        return idx, torch.full((B,), T, device=idx.device, dtype=torch.long)
    if attention_mask.shape != idx.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != idx {(B, T)}")
    real = attention_mask.bool()
    lengths = real.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("a row of the batch has no real token (an empty text?)")
    # A stable sort on "is padding" (0 before 1) keeps the real tokens' order.
    order = torch.argsort((~real).to(torch.uint8), dim=1, stable=True)
    return idx.gather(1, order), lengths


# ---------------------------------------------------------------------------------------------
# What trains
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainableSummary:
    names: list[str]  # the trainable parameters, by name
    trainable: int  # their number of elements
    total: int  # every parameter's elements, shared ones once

    def __str__(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        return f"trainable parameters: {self.trainable:,} of {self.total:,} ({share:.2f}%)"


def set_trainable(
    classifier: SequenceClassifier,
    mode: TrainableMode,
    last_k: int = 1,
    add_adapters: Callable[[nn.Module], object] | None = None,
) -> TrainableSummary:
    """Freeze every parameter, then unfreeze those `mode` trains (module docstring).

    last_k is the number of blocks "last_blocks" trains. "lora" needs `add_adapters`, a function
    that puts trainable adapter layers into the (now frozen) backbone it is given, e.g.
    functools.partial(apply_lora, targets=..., rank=...) from finetune/lora.py; it is called
    once, after the freeze, so only its new parameters (and the head) train.
    """
    backbone = classifier.backbone
    if mode not in TRAINABLE_MODES:
        raise ScratchLMError(
            f"unknown trainable mode {mode!r}; choose one of {', '.join(TRAINABLE_MODES)}"
        )
    classifier.requires_grad_(False)
    classifier.score.requires_grad_(True)
    if mode == "last_blocks":
        n_layer = len(backbone.blocks)
        if not 1 <= last_k <= n_layer:
            raise ScratchLMError(
                f"last_k = {last_k}, but the model has {n_layer} blocks; choose 1 to {n_layer} "
                "(or train all)"
            )
        for block in backbone.blocks[n_layer - last_k :]:
            block.requires_grad_(True)
        backbone.transformer["ln_f"].requires_grad_(True)
    elif mode == "all":
        backbone.requires_grad_(True)
        wte = cast(nn.Embedding, backbone.transformer["wte"]).weight
        if backbone.lm_head.weight is not wte:
            backbone.lm_head.requires_grad_(False)  # untied: never used by the classifier
    elif mode == "lora":
        if add_adapters is None:
            raise ValueError('mode "lora" needs add_adapters, the function that adds them')
        add_adapters(backbone)
        if not any(p.requires_grad for p in backbone.parameters()):
            raise ScratchLMError(
                "the LoRA adapters added no trainable parameter to the model; check the targets"
            )
    return trainable_summary(classifier)


def trainable_summary(model: nn.Module) -> TrainableSummary:
    params = dict(model.named_parameters())  # a shared (tied) parameter once
    names = [name for name, p in params.items() if p.requires_grad]
    return TrainableSummary(
        names=names,
        trainable=sum(params[name].numel() for name in names),
        total=sum(p.numel() for p in params.values()),
    )


# ---------------------------------------------------------------------------------------------
# From texts to batches, and the loss
# ---------------------------------------------------------------------------------------------


def encode_texts(
    encode: Callable[[str], list[int]], texts: Sequence[str], max_length: int
) -> list[list[int]]:
    """Each text's token ids, cut to its first max_length tokens (a text's beginning, where an
    e-mail's subject is, says most about it); a text with no tokens is refused."""
    if max_length < 1:
        raise ScratchLMError(f"max_length must be at least 1, got {max_length}")
    encoded = []
    for number, text in enumerate(texts):
        ids = encode(text)[:max_length]
        if not ids:
            raise ScratchLMError(f"text {number} ({text[:30]!r}) has no tokens; drop empty texts")
        encoded.append(ids)
    return encoded


def pad_batch(
    sequences: Sequence[Sequence[int]],
    pad_id: int = 0,
    side: Literal["right", "left"] = "right",
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Token id lists -> (idx (B, T), attention_mask (B, T)), T the longest, padded with
    pad_id on `side`. Any pad_id works: the mask, not the id, marks padding."""
    T = max(len(s) for s in sequences)
    idx = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for row, seq in enumerate(sequences):
        start = 0 if side == "right" else T - len(seq)
        idx[row, start : start + len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, start : start + len(seq)] = 1
    return idx.to(device), mask.to(device)


@dataclass(frozen=True)
class ClassificationBatch:
    idx: Tensor  # (B, T) token ids, right-padded
    attention_mask: Tensor  # (B, T), 1 = real token
    labels: Tensor  # (B,) class indices


def classification_batches(
    token_ids: Sequence[Sequence[int]],
    labels: Sequence[int],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    pad_id: int = 0,
    device: torch.device | str | None = None,
) -> Iterator[ClassificationBatch]:
    """One pass over the examples in batches of batch_size (the last may be smaller).

    With shuffle, the order is a permutation drawn from random.Random(seed): pass seed + epoch
    for a new order each epoch that a resumed run draws again. Each batch is padded only to its
    own longest text.
    """
    if len(token_ids) != len(labels):
        raise ValueError(f"{len(token_ids)} texts but {len(labels)} labels")
    order = list(range(len(token_ids)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        idx, mask = pad_batch([token_ids[i] for i in rows], pad_id, "right", device)
        y = torch.tensor([labels[i] for i in rows], dtype=torch.long, device=device)
        yield ClassificationBatch(idx, mask, y)


def classification_loss(
    classifier: SequenceClassifier, batch: ClassificationBatch, class_weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(mean cross-entropy, logits (B, K)) of a batch; class_weights (K,) weigh rare classes up."""
    logits = classifier(batch.idx, batch.attention_mask)
    return F.cross_entropy(logits.float(), batch.labels, weight=class_weights), logits


@torch.no_grad()
def predict_probabilities(
    classifier: SequenceClassifier,
    token_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Class probabilities (N, K) of already-encoded texts, in eval mode (no dropout).

    Texts are batched in order of length, so a batch pads little, and the rows come back in the
    order given."""
    was_training = classifier.training
    classifier.eval()
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    probs = torch.empty(len(token_ids), classifier.num_classes)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        idx, mask = pad_batch([token_ids[i] for i in rows], device=device)
        probs[rows] = torch.softmax(classifier(idx, mask).float(), dim=-1).cpu()
    classifier.train(was_training)
    return probs
