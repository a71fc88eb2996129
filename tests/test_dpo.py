"""DPO: the loss against hand-computed values, the reply log-probs it is built on, the
preference files and the generated preference set, and a tiny model that learns a preference."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.finetune.conversations import CHATML_TEMPLATE as CHATML
from scratchlm.finetune.dpo import (
    EncodedPreference,
    collate_preferences,
    dpo_batch_loss,
    dpo_loss,
    encode_preference,
    encode_preferences,
    encode_prompt,
    encode_reply,
    evaluate_preferences,
    precompute_reference,
    sequence_logprobs,
)
from scratchlm.finetune.preferences import (
    PreferencePair,
    fraction_ending_in_question,
    generate_preferences,
    mean_words,
    measure_generations,
    pairs_from_replies,
    read_preferences,
    write_preferences,
)
from scratchlm.inference.language_model import LanguageModel
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.tokenizer import BPETokenizer

SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
LN2 = math.log(2)


def tiny_gpt(vocab: int = 259, block: int = 64, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32, bias=False,
        pos_encoding="rope", norm="rmsnorm", mlp="swiglu",
    )  # fmt: skip
    return GPT(config)


def byte_lm(chat: bool, block: int = 64) -> LanguageModel:
    """A byte-level model (one token per byte, ChatML's specials) with or without ChatML."""
    tokenizer = BPETokenizer(merges={}, special_tokens=SPECIALS)
    eos = SPECIALS["<|im_end|>" if chat else "<|endoftext|>"]
    return LanguageModel(
        model=tiny_gpt(block=block),
        tokenizer=tokenizer,
        chat_template=CHATML if chat else None,
        token_roles={"eos": eos, "bos": eos, "pad": eos},
    )


# ------------------------------------------------------------------------------ the loss


def test_dpo_loss_equals_hand_computed_values() -> None:
    # Pair 1: log-ratios chosen -1 - (-1.5) = 0.5, rejected -2 - (-1.5) = -0.5, h = 1, βh = 0.1:
    #   -log σ(0.1) = log(1 + e^-0.1) = 0.6443966600735709
    # Pair 2: chosen -3 - (-2) = -1, rejected -1 - (-2) = 1, h = -2, βh = -0.2:
    #   -log σ(-0.2) = log(1 + e^0.2) = 0.7981388693815918
    out = dpo_loss(
        torch.tensor([-1.0, -3.0]),
        torch.tensor([-2.0, -1.0]),
        torch.tensor([-1.5, -2.0]),
        torch.tensor([-1.5, -2.0]),
        beta=0.1,
    )
    assert out.loss.item() == pytest.approx((0.6443966600735709 + 0.7981388693815918) / 2)
    assert out.chosen_rewards.tolist() == pytest.approx([0.05, -0.1])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.05, 0.1])
    assert out.margins.tolist() == pytest.approx([0.1, -0.2])
    assert out.accuracy.item() == 0.5  # one pair right, one wrong
    metrics = out.metrics()
    assert metrics["reward_margin"] == pytest.approx(-0.05)
    assert metrics["dpo_loss"] == pytest.approx(0.7212677647275813)


def test_conservative_dpo_equals_hand_computed_value() -> None:
    # ε = 0.25 on pair 1 above: 0.75 log(1 + e^-0.1) + 0.25 log(1 + e^0.1)
    #   = 0.75 * 0.6443966600735709 + 0.25 * 0.7443966600735709 = 0.6693966600735709
    out = dpo_loss(
        torch.tensor([-1.0]),
        torch.tensor([-2.0]),
        torch.tensor([-1.5]),
        torch.tensor([-1.5]),
        beta=0.1,
        label_smoothing=0.25,
    )
    assert out.loss.item() == pytest.approx(0.6693966600735709)
    assert out.accuracy.item() == 1.0


def test_dpo_gradient_pushes_chosen_up_and_rejected_down() -> None:
    policy_chosen = torch.tensor([-1.0], requires_grad=True)
    policy_rejected = torch.tensor([-1.0], requires_grad=True)
    out = dpo_loss(policy_chosen, policy_rejected, torch.tensor([-1.0]), torch.tensor([-1.0]))
    out.loss.backward()
    # d/dx -log σ(β (x - y)) at x = y: -β σ(0) = -0.05 (and +0.05 for y)
    assert policy_chosen.grad is not None and policy_rejected.grad is not None
    assert policy_chosen.grad.item() == pytest.approx(-0.05)
    assert policy_rejected.grad.item() == pytest.approx(0.05)


@pytest.mark.parametrize(("beta", "smoothing"), [(0.0, 0.0), (-0.1, 0.0), (0.1, 0.5)])
def test_bad_dpo_settings_are_refused(beta: float, smoothing: float) -> None:
    one = torch.zeros(1)
    with pytest.raises(ScratchLMError, match=r"beta|label_smoothing"):
        dpo_loss(one, one, one, one, beta, smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_step_zero_loss_is_ln2(smoothing: float) -> None:
    policy = tiny_gpt(vocab=32, block=16)
    reference = copy.deepcopy(policy)
    pairs = [
        EncodedPreference([1, 2, 3], [4, 5], [6]),
        EncodedPreference([7], [8, 9, 10], [11, 12]),
    ]
    out = dpo_batch_loss(policy, reference, collate_preferences(pairs), 0.1, smoothing)
    assert out.loss.item() == pytest.approx(LN2, abs=1e-7)
    assert out.margins.tolist() == [0.0, 0.0]
    assert out.accuracy.item() == 0.5  # every pair ties: chance level


# ------------------------------------------------------------------------------ log-probs


def test_collate_marks_exactly_the_reply_targets() -> None:
    batch = collate_preferences(
        [EncodedPreference([5, 6], [7], [8, 9])], pad_id=0
    )  # rows [5 6 7] and [5 6 8 9]
    assert batch.inputs.tolist() == [[5, 6, 7], [5, 6, 8]]
    assert batch.targets.tolist() == [[6, 7, 0], [6, 8, 9]]
    assert batch.reply_mask.tolist() == [[False, True, False], [False, True, True]]
    assert batch.pairs == 1 and batch.reference is None


def test_sequence_logprobs_sum_the_reply_tokens_given_the_prompt() -> None:
    model = tiny_gpt(vocab=32, block=16).eval()
    pairs = [EncodedPreference([1, 2, 3], [4, 5], [6]), EncodedPreference([7], [8, 9, 10], [11])]
    batch = collate_preferences(pairs, pad_id=31)
    got = sequence_logprobs(model, batch.inputs, batch.targets, batch.reply_mask)
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    for value, (prompt, reply) in zip(got.tolist(), rows, strict=True):
        ids = prompt + reply  # alone, unpadded, every position's logits
        logits, _ = model(torch.tensor([ids]))
        logp = torch.log_softmax(logits[0], dim=-1)
        expected = sum(logp[t - 1, ids[t]].item() for t in range(len(prompt), len(ids)))
        assert value == pytest.approx(expected, abs=1e-5)


def test_a_wrapped_model_is_scored_through_its_forward() -> None:
    # DDP syncs gradients in its forward: a wrapper is called, not reached around.
    class Wrapper(torch.nn.Module):
        def __init__(self, module: GPT) -> None:
            super().__init__()
            self.module = module

        def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
            return self.module(idx)

    model = tiny_gpt(vocab=32, block=16).eval()
    batch = collate_preferences([EncodedPreference([1, 2, 3], [4, 5], [6])])
    direct = sequence_logprobs(model, batch.inputs, batch.targets, batch.reply_mask)
    wrapped = sequence_logprobs(Wrapper(model), batch.inputs, batch.targets, batch.reply_mask)
    assert torch.allclose(direct, wrapped, atol=1e-5)


def test_precomputed_reference_gives_the_same_loss() -> None:
    policy = tiny_gpt(vocab=32, block=16)
    reference = tiny_gpt(vocab=32, block=16, seed=1)
    pairs = [EncodedPreference([1, 2], [3, 4], [5]), EncodedPreference([6], [7], [8, 9])]
    live = dpo_batch_loss(policy, reference, collate_preferences(pairs))
    stored = precompute_reference(reference, pairs, batch_size=1)
    assert all(p.reference is not None for p in stored)
    batch = collate_preferences(stored)
    assert batch.reference is not None
    cached = dpo_batch_loss(policy, None, batch)
    assert cached.loss.item() == pytest.approx(live.loss.item(), abs=1e-6)
    assert live.loss.item() != pytest.approx(LN2)  # two different models: not a tie
    with pytest.raises(ScratchLMError, match="reference"):
        dpo_batch_loss(policy, None, collate_preferences(pairs))


# ------------------------------------------------------------------------------ encoding


def test_chat_encoding_scores_the_reply_and_its_end_of_turn() -> None:
    lm = byte_lm(chat=True)
    prompt = encode_prompt(lm, "Hi")
    assert lm.tokenizer.decode(prompt) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # A reply that spells the end-of-turn token gets its plain bytes, never the control token.
    reply = encode_reply(lm, "Hi", prompt, "Yo<|im_end|>")
    assert reply[-2:] == [SPECIALS["<|im_end|>"], ord("\n")]
    assert reply.count(SPECIALS["<|im_end|>"]) == 1
    assert lm.tokenizer.decode(reply) == "Yo<|im_end|><|im_end|>\n"
    conversation = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    assert lm.tokenizer.decode(encode_prompt(lm, conversation)).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi"
    )


def test_plain_encoding_ends_the_reply_with_end_of_text() -> None:
    lm = byte_lm(chat=False)
    encoded = encode_preference(lm, PreferencePair("Q:", " a", " bb"))
    assert encoded.prompt == [ord("Q"), ord(":")]
    assert encoded.chosen == [ord(" "), ord("a"), SPECIALS["<|endoftext|>"]]
    assert encoded.rejected == [ord(" "), ord("b"), ord("b"), SPECIALS["<|endoftext|>"]]
    assert not encoded.truncated
    with pytest.raises(ScratchLMError, match="chat template"):
        encode_preference(lm, PreferencePair(({"role": "user", "content": "Q"},), "a", "b"))


def test_a_long_pair_loses_its_prompts_start_first() -> None:
    lm = byte_lm(chat=False)
    encoded = encode_preference(lm, PreferencePair("abcdefghij", "xy", "z"), max_length=8)
    # The longest reply is 3 tokens (xy + end of text): 5 prompt tokens remain, the last ones.
    assert encoded.truncated and encoded.prompt == list(b"fghij")
    assert len(encoded.prompt) + len(encoded.chosen) == 8
    # A reply longer than the room left keeps half the budget for the prompt, and is cut.
    long_reply = encode_preference(lm, PreferencePair("abcdefghij", "x" * 20, "z"), max_length=8)
    assert long_reply.prompt == list(b"ghij") and long_reply.chosen == list(b"xxxx")


def test_pairs_cut_until_alike_are_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    lm = byte_lm(chat=False)
    pairs = [PreferencePair("Q", "abc", "abcdef"), PreferencePair("Q", "a", "b")]
    [kept] = encode_preferences(lm, pairs, max_length=3)  # the first: "ab" and "ab"
    assert (kept.chosen, kept.rejected) == ([ord("a"), 256], [ord("b"), 256])
    assert "1 of 2 preference pairs are longer than max_length=3" in capsys.readouterr().err
    with pytest.raises(ScratchLMError, match="no preference pair is left"):
        encode_preferences(lm, pairs[:1], max_length=3)


def test_replies_that_encode_alike_are_refused() -> None:
    lm = byte_lm(chat=False)
    with pytest.raises(ScratchLMError, match="same tokens"):
        encode_preference(lm, PreferencePair("Q", "a", "a"))


# ------------------------------------------------------------------------------ files


def test_preference_file_round_trip(tmp_path: Path) -> None:
    pairs = [
        PreferencePair("Hi", "Hello!", "Go away."),
        PreferencePair(({"role": "user", "content": "2+2?"},), "4", "5"),
    ]
    path = tmp_path / "prefs.jsonl"
    write_preferences(path, pairs)
    path.write_text(path.read_text() + "\n\n")  # blank lines are skipped
    assert read_preferences(path) == pairs


def test_conversational_replies_are_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "prefs.jsonl"
    record = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello"}],
        "rejected": [{"role": "assistant", "content": "Bye"}],
    }
    path.write_text(json.dumps(record) + "\n")
    [pair] = read_preferences(path)
    assert pair == PreferencePair(({"role": "user", "content": "Hi"},), "Hello", "Bye")


GOOD = '{"prompt": "p", "chosen": "a", "rejected": "b"}'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"line 2: not valid JSON"),
        ('["p", "a", "b"]', r"line 2: expected an object"),
        ('{"prompt": "p", "chosen": "a"}', r'line 2: key "rejected" is missing'),
        ('{"prompt": "p", "chosen": "same", "rejected": "same"}', r"line 2: .*the same reply"),
        ('{"prompt": "  ", "chosen": "a", "rejected": "b"}', r'line 2: key "prompt" is empty'),
        ('{"prompt": "p", "chosen": "", "rejected": "b"}', r'line 2: key "chosen" is empty'),
        ('{"prompt": "p", "chosen": "a", "rejected": 3}', r'line 2: key "rejected" must be text'),
        ('{"prompt": [], "chosen": "a", "rejected": "b"}', r'line 2: key "prompt" must be'),
        (
            '{"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}',
            r"line 2: .*message 0 has role 'bot'",
        ),
        (
            '{"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}',
            r"line 2: .*ends with an assistant message",
        ),
    ],
)
def test_bad_preference_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "prefs.jsonl"
    path.write_text(GOOD + "\n" + line + "\n")
    with pytest.raises(ScratchLMError, match=message):
        read_preferences(path)


def test_empty_or_missing_preference_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ScratchLMError, match="holds no pairs"):
        read_preferences(tmp_path / "empty.jsonl")
    with pytest.raises(ScratchLMError, match="does not exist"):
        read_preferences(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------ generated set


def toy_chats(count: int, seed: int = 0) -> list[str]:
    """Chats of short made-up messages, one per line, as the chitchat corpus stores them; each
    chat's lines carry its number (cN), so a test can tell which chat a pair came from."""
    rng = random.Random(seed)
    words = ["cat", "dog", "sun", "red", "big", "run", "fun", "hot", "tea", "sky"]
    chats = []
    for n in range(count):
        lines = []
        for _ in range(8):
            message = " ".join(rng.choice(words) for _ in range(rng.randint(2, 3)))
            lines.append(f"c{n} {message}" + ("?" if rng.random() < 0.3 else ""))
        chats.append("\n".join(lines) + "\n")
    return chats


def chat_of(text: str) -> str:
    return text.split()[0]


@pytest.mark.parametrize("name", ["concise", "question"])
def test_generated_preferences_are_deterministic_and_split_by_chat(name: str) -> None:
    chats = toy_chats(120)
    split = generate_preferences(name, chats, count=60, held_out=20, seed=3)
    assert split == generate_preferences(name, chats, count=60, held_out=20, seed=3)
    assert split != generate_preferences(name, chats, count=60, held_out=20, seed=4)
    assert len(split.train) == 60 and len(split.held_out) == 20
    for side in (split.train, split.held_out):
        assert len({p.prompt for p in side}) == len(side)  # a prompt once per side
    train_chats = {chat_of(str(p.prompt)) for p in split.train}
    held_chats = {chat_of(str(p.prompt)) for p in split.held_out}
    assert not train_chats & held_chats
    for pair in split.train + split.held_out:
        assert {chat_of(pair.chosen), chat_of(pair.rejected)} == {chat_of(str(pair.prompt))}
        if name == "concise":
            assert pair.rejected.startswith(pair.chosen + " ")
            assert len(pair.rejected.split()) > len(pair.chosen.split())
        else:
            assert pair.chosen.startswith(pair.rejected + " ") and pair.chosen.endswith("?")
            assert not pair.rejected.endswith("?")


def test_generated_preferences_refuse_what_they_cannot_make() -> None:
    with pytest.raises(ScratchLMError, match="unknown generated preference 'polite'"):
        generate_preferences("polite", toy_chats(5))
    with pytest.raises(ScratchLMError, match=r"5 chats make only .* fewer than the 100"):
        generate_preferences("concise", toy_chats(5), count=100, held_out=10)


def test_pairs_rebuilt_around_the_models_own_replies() -> None:
    concise = PreferencePair("Hi", "Hey", "Hey you there? ok")
    question = PreferencePair("Hi", "Hey What's new?", "Hey")
    replies = ["Hello there. I am a model.\nAsk me.", "One sentence only.", "Sure thing?"]
    assert pairs_from_replies("concise", [concise] * 3, replies) == [
        PreferencePair("Hi", "Hello there.", "Hello there. I am a model.\nAsk me.")
    ]
    assert pairs_from_replies("question", [question] * 3, replies) == [
        PreferencePair("Hi", "Hello there. I am a model.\nAsk me. What's new?", replies[0].strip()),
        PreferencePair("Hi", "One sentence only. What's new?", "One sentence only."),
    ]  # a reply that is already a question carries no preference for one
    with pytest.raises(ScratchLMError, match="1 pairs but 3 replies"):
        pairs_from_replies("concise", [concise], replies)


def test_measures() -> None:
    assert mean_words(["a b", "c", " d  e f "]) == 2.0
    assert fraction_ending_in_question(["hi?", "no", "ok? "]) == pytest.approx(2 / 3)
    with pytest.raises(ScratchLMError, match="no replies"):
        mean_words([])


# ------------------------------------------------------------------------------ end to end


def dpo_steps(
    policy: GPT, reference: GPT, train: list[EncodedPreference], steps: int, lr: float
) -> None:
    """`steps` of DPO with a plain AdamW loop, 8 pairs a step."""
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(0)
    for _ in range(steps):
        out = dpo_batch_loss(policy, reference, collate_preferences(rng.sample(train, 8)))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()


def test_a_tiny_model_learns_a_preference() -> None:
    # The concise preference on toy chats, a byte-level model from random weights: a dozen
    # AdamW steps of DPO take held-out preference accuracy from chance to >= 90%. (Plain
    # prompts keep it fast; the slow test below goes through the chat template.)
    lm = byte_lm(chat=False, block=128)
    split = generate_preferences("concise", toy_chats(80), count=48, held_out=32, seed=0)
    train = [encode_preference(lm, p) for p in split.train]
    held = [encode_preference(lm, p) for p in split.held_out]
    reference = copy.deepcopy(lm.model).requires_grad_(False)
    before = evaluate_preferences(lm.model, reference, held)
    assert before["preference_accuracy"] == 0.5 and before["dpo_loss"] == pytest.approx(LN2)
    dpo_steps(lm.model, reference, train, steps=12, lr=3e-3)
    after = evaluate_preferences(lm.model, reference, held)
    assert after["preference_accuracy"] >= 0.9
    assert after["dpo_loss"] < 0.5 and after["reward_margin"] > 0


@pytest.mark.slow
def test_generations_move_the_preferred_way() -> None:
    # A model first fine-tuned on both kinds of reply rambles (greedy replies run on); DPO on
    # the concise preference makes its replies to held-out prompts shorter, still words.
    lm = byte_lm(chat=True, block=128)
    split = generate_preferences("concise", toy_chats(100), count=64, held_out=32, seed=0)
    train = [encode_preference(lm, p) for p in split.train]
    held = [encode_preference(lm, p) for p in split.held_out]
    optimizer = torch.optim.AdamW(lm.model.parameters(), lr=1e-2, weight_decay=0.0)
    rng = random.Random(0)
    for _ in range(80):  # supervised warm-up: the mean log-prob of the replies' tokens
        batch = collate_preferences(rng.sample(train, 8))
        logps = sequence_logprobs(lm.model, batch.inputs, batch.targets, batch.reply_mask)
        loss = -logps.sum() / batch.reply_mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sampling = lm.sampling(temperature=0.0, max_new_tokens=64)
    prompts = [p.prompt for p in split.held_out[:16]]
    words_before = measure_generations(lm, "concise", prompts, sampling)
    reference = copy.deepcopy(lm.model).requires_grad_(False)
    dpo_steps(lm.model, reference, train, steps=10, lr=3e-4)
    assert evaluate_preferences(lm.model, reference, held)["preference_accuracy"] >= 0.9
    words_after = measure_generations(lm, "concise", prompts, sampling)
    assert words_before > 10 and 1 < words_after < words_before / 2


def test_nll_weight_adds_the_chosen_replies_nll_per_token() -> None:
    """RPO's term, by hand: the loss grows by weight x (-sum of chosen log-probs / chosen
    reply tokens), and the rewards stay DPO's."""
    from scratchlm.finetune.dpo import PreferenceBatch, dpo_batch_loss, sequence_logprobs

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16))
    inputs = torch.randint(0, 40, (4, 6))
    targets = torch.randint(0, 40, (4, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0],
                         [0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)  # fmt: skip
    batch = PreferenceBatch(inputs, targets, mask, torch.tensor([-3.0, -4.0, -5.0, -6.0]))
    plain = dpo_batch_loss(model, None, batch, beta=0.2)
    rpo = dpo_batch_loss(model, None, batch, beta=0.2, nll_weight=0.5)
    with torch.no_grad():
        chosen = sequence_logprobs(model, inputs, targets, mask)[:2]
    nll = float(-chosen.sum() / 5)  # 3 + 2 chosen reply tokens
    assert float(rpo.loss) == pytest.approx(float(plain.loss) + 0.5 * nll, rel=1e-6)
    assert torch.equal(rpo.margins, plain.margins)
