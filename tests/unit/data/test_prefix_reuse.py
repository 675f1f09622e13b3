"""Alpaca's fixed prompt opening is encoded once per tokenizer, never changing a token."""

from __future__ import annotations

import random

import pytest
from kubetune.data.formats.instruct import ALPACA_NO_INPUT, ALPACA_WITH_INPUT, Alpaca
from kubetune.data.formats.junction import PrefixSplit, splittable
from kubetune.tiny import alpaca_rows, train_tokenizer

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Heads chosen to sit on every kind of junction: whitespace runs, newlines (which Llama 3's
# pattern glues to the ":" before them), punctuation, contractions, digits, unicode.
HEADS = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\r\n",
    " \n",
    "\t",
    "   x",
    "\nx",
    "\n\n\nx",
    ":",
    "::\n",
    "'s",
    "'S x",
    "'ll",
    "123",
    "1234567",
    " 12",
    "-",
    "#",
    "###",
    "!?",
    "é",
    "日本語",
    "👍 ok",
    "\u00a0x",
    " ,",
    "\n ",
    "x" * 40,
    " " * 30 + "x",
    "\n" * 30,
    "a'" * 20,
    ".\n\n",
    "<s>",
    "s>",
    "<|im_end|>",
    "|im_end|>",
]


def random_text(rng: random.Random) -> str:
    alphabet = [
        "a",
        "Z",
        " ",
        "  ",
        "\n",
        "\n\n",
        "'",
        "'s",
        "1",
        "42",
        ".",
        ":",
        "-",
        "é",
        "日",
        "👍",
        "\t",
        "<",
        ">",
        "|",
    ]
    return rng.choice(HEADS) + "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))


def llama3_style_tokenizer(corpus: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"
    )


@pytest.fixture(scope="module", params=["tiny", "llama3"])
def any_tokenizer(request):
    corpus = [" ".join(row.values()) for row in alpaca_rows(300)]
    corpus += [ALPACA_WITH_INPUT, ALPACA_NO_INPUT, ":\n\n ' 's 123 \r\n"]
    return train_tokenizer(corpus) if request.param == "tiny" else llama3_style_tokenizer(corpus)


def joint_reference(tokenizer, rows) -> list[list[int]]:
    """The prompt as one string, the output as another: what the format did before reuse."""
    fmt = Alpaca(tokenizer, {})
    fmt.prefix_reuse = False
    examples = fmt.tokenize_rows(rows)
    return [
        examples.input_ids[s:e].tolist()
        for s, e in zip(examples.offsets[:-1], examples.offsets[1:], strict=True)
    ]


def test_both_tokenizers_qualify(any_tokenizer):
    assert splittable(any_tokenizer.backend_tokenizer)
    assert Alpaca(any_tokenizer, {})._prefix_splits() is not None


def test_reuse_gives_the_joint_tokens_on_many_random_rows(any_tokenizer):
    rng = random.Random(0)
    rows = [
        {
            "instruction": random_text(rng),
            "input": random_text(rng) if rng.random() < 0.5 else "",
            "output": random_text(rng) or "x",
        }
        for _ in range(3000)
    ]
    rows += [
        {"instruction": head, "input": extra, "output": "ok"} for head in HEADS for extra in ("", head, "z")
    ]
    rows += [dict(row) for row in rows[:500]]  # duplicates: encoded once, placed everywhere
    fmt = Alpaca(any_tokenizer, {})
    examples = fmt.tokenize_rows(rows)
    got = [
        examples.input_ids[s:e].tolist()
        for s, e in zip(examples.offsets[:-1], examples.offsets[1:], strict=True)
    ]
    assert got == joint_reference(any_tokenizer, rows)
    reference_labels = Alpaca(any_tokenizer, {})
    reference_labels.prefix_reuse = False
    assert examples.labels.tolist() == reference_labels.tokenize_rows(rows).labels.tolist()
    # The reuse really happened on most rows, and really fell back on some.
    split = fmt._prefix_splits()[1]
    decisions = [
        split.ok(ALPACA_NO_INPUT[len(split.prefix) :].format(instruction=r["instruction"])) for r in rows
    ]
    assert 0.3 < sum(decisions) / len(decisions) < 1


def test_every_head_matches_the_joint_encoding_when_accepted(any_tokenizer):
    backend = any_tokenizer.backend_tokenizer
    prefix = ALPACA_NO_INPUT[: ALPACA_NO_INPUT.index("{instruction}")]
    split = PrefixSplit(backend, prefix)
    rng = random.Random(1)
    for head in HEADS:
        for _ in range(20):
            text = head + random_text(rng)
            joint = backend.encode(prefix + text, add_special_tokens=False).ids
            if split.ok(text):
                assert split.prefix_ids + backend.encode(text, add_special_tokens=False).ids == joint, repr(
                    text
                )


def test_known_crossing_junctions_fall_back(any_tokenizer):
    prefix = ALPACA_NO_INPUT[: ALPACA_NO_INPUT.index("{instruction}")]  # ends ":\n"
    split = PrefixSplit(any_tokenizer.backend_tokenizer, prefix)
    assert split.ok("Write a poem about the sea.")
    assert not split.ok("\n\n\nx")  # the newlines join the prefix's last piece, in both patterns
    assert not split.ok(" " * 40 + "x")  # the whitespace run leaves the window


def test_unqualified_tokenizers_are_encoded_jointly():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    def state(pre, normalizer=None):
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre
        if normalizer is not None:
            backend.normalizer = normalizer
        return backend

    assert not splittable(state(pre_tokenizers.ByteLevel(add_prefix_space=True)))
    assert not splittable(state(pre_tokenizers.Metaspace()))
    assert not splittable(state(pre_tokenizers.ByteLevel(add_prefix_space=False), normalizers.NFKC()))
    assert not splittable(state(pre_tokenizers.Split(r"(?<=a)b", behavior="isolated")))
    assert splittable(state(pre_tokenizers.ByteLevel(add_prefix_space=False)))
