"""Per-format tokens and labels: the trained spans decode to exactly the expected responses."""

from __future__ import annotations

import textwrap

import pytest
from kubetune.data import IGNORE_INDEX, DataError
from kubetune.data.formats import RowProblem, resolve_format
from kubetune.data.formats import base as base_module
from kubetune.data.formats.instruct import (
    ALPACA_NO_INPUT,
    ALPACA_WITH_INPUT,
    Alpaca,
    Completion,
    InputOutput,
    Pretokenized,
)
from kubetune.data.pipeline import make_format
from kubetune.tiny import train_tokenizer

from .conftest import decoded_spans, example, train_config


def tokenize(fmt, rows):
    examples = fmt.tokenize_rows(rows)
    return [example(examples, k) for k in range(len(examples))]


# -- alpaca ------------------------------------------------------------------------------------


def test_alpaca_trains_exactly_the_output_and_eos(tokenizer):
    rows = [
        {"instruction": "Spell the digit.", "input": "6", "output": "six"},
        {"instruction": "Count on from the number.", "input": "", "output": "4 5 6"},
        {"instruction": "Say hi.", "input": None, "output": "hi there"},
    ]
    for row, (ids, labels) in zip(rows, tokenize(Alpaca(tokenizer, {}), rows), strict=True):
        template = ALPACA_WITH_INPUT if row["input"] else ALPACA_NO_INPUT
        prompt = template.format(instruction=row["instruction"], input=row["input"])
        assert tokenizer.decode(ids) == "<s>" + prompt + row["output"] + "</s>"
        assert decoded_spans(tokenizer, labels) == [row["output"] + "</s>"]
        trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        assert [ids[i] for i in trained] == [labels[i] for i in trained]  # labels are the ids themselves


def test_alpaca_prompt_and_response_are_encoded_separately():
    """The documented boundary rule: prompt tokens are exactly what the prompt alone encodes to
    (what inference feeds the model), response tokens exactly what the response alone encodes to.
    This tokenizer learned a "\n\n" token, so encoding prompt + response jointly would differ."""
    tokenizer = train_tokenizer([ALPACA_NO_INPUT, "Spell the digit. six"] + ["one\n\n\ntwo"] * 50)
    row = {"instruction": "Spell the digit.", "input": "", "output": "\n\nsix"}
    ((ids, labels),) = tokenize(Alpaca(tokenizer, {}), [row])
    prompt = ALPACA_NO_INPUT.format(instruction=row["instruction"])
    prompt_ids = tokenizer(prompt)["input_ids"]  # with the tokenizer's own bos
    response_ids = tokenizer(row["output"], add_special_tokens=False)["input_ids"]
    assert ids == prompt_ids + response_ids + [tokenizer.eos_token_id]
    assert labels == [IGNORE_INDEX] * len(prompt_ids) + response_ids + [tokenizer.eos_token_id]
    assert decoded_spans(tokenizer, labels) == ["\n\nsix</s>"]
    joint = tokenizer(prompt + row["output"])["input_ids"]
    assert joint != prompt_ids + response_ids  # the case the rule decides


def test_alpaca_field_mappings_and_train_on_inputs(tokenizer):
    row = {"q": "Spell the digit.", "ctx": "2", "a": "two"}
    mapping = {"field_instruction": "q", "field_input": "ctx", "field_output": "a"}
    fmt = Alpaca(tokenizer, mapping)
    assert fmt.required_fields == ("q", "a")
    ((ids, labels),) = tokenize(fmt, [row])
    assert decoded_spans(tokenizer, labels) == ["two</s>"]
    ((ids_all, labels_all),) = tokenize(Alpaca(tokenizer, mapping, train_on_inputs=True), [row])
    assert ids_all == ids
    # Everything is trained except the first token, which nothing in the example predicts.
    assert labels_all == [IGNORE_INDEX] + ids[1:]


def test_alpaca_missing_output_is_a_row_problem(tokenizer):
    with pytest.raises(RowProblem, match=r"row 1: field 'output' is empty"):
        Alpaca(tokenizer, {}).tokenize_rows([{"instruction": "a", "output": "b"}, {"instruction": "a"}])


# -- completion, input_output, pretokenized ---------------------------------------------------


def test_completion_trains_all_text_and_eos(tokenizer):
    rows = [{"text": "red green blue"}, {"body": "one two"}]
    ((ids, labels),) = tokenize(Completion(tokenizer, {}), rows[:1])
    assert tokenizer.decode(ids) == "<s>red green blue</s>"
    assert decoded_spans(tokenizer, labels) == ["red green blue</s>"]
    ((_, labels),) = tokenize(Completion(tokenizer, {"field": "body"}), rows[1:])
    assert decoded_spans(tokenizer, labels) == ["one two</s>"]


def test_input_output_trains_the_labelled_segments_as_written(tokenizer):
    row = {
        "segments": [
            {"text": "<s>Question: two plus two?\n", "label": False},
            {"text": "Answer: four</s>", "label": True},
            {"text": "\nQuestion: and again?\n", "label": False},
            {"text": "Answer: four</s>", "label": True},
        ]
    }
    ((ids, labels),) = tokenize(InputOutput(tokenizer, {}), [row])
    assert tokenizer.decode(ids) == "".join(s["text"] for s in row["segments"])  # nothing added
    assert decoded_spans(tokenizer, labels) == ["Answer: four</s>", "Answer: four</s>"]
    ((_, labels_all),) = tokenize(InputOutput(tokenizer, {}, train_on_inputs=True), [row])
    assert labels_all == [IGNORE_INDEX] + ids[1:]
    with pytest.raises(RowProblem, match=r"segments\[0\].label must be true or false"):
        InputOutput(tokenizer, {}).tokenize_rows([{"segments": [{"text": "x", "label": "yes"}]}])


def test_pretokenized_rows_are_taken_as_they_are(tokenizer):
    rows = [{"input_ids": [1, 5, 6, 7], "labels": [-100, -100, 6, 7]}, {"input_ids": [1, 8, 9]}]
    assert tokenize(Pretokenized(tokenizer, {}), rows) == [
        ([1, 5, 6, 7], [-100, -100, 6, 7]),
        ([1, 8, 9], [-100, 8, 9]),
    ]
    with pytest.raises(RowProblem, match="row 0: 'labels' has 1 entries but 'input_ids' has 2"):
        Pretokenized(tokenizer, {}).tokenize_rows([{"input_ids": [1, 2], "labels": [2]}])


# -- chat_template -----------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Spell the digit. 6"},
    {"role": "assistant", "content": "six"},
    {"role": "user", "content": "Translate the colour to French. red"},
    {"role": "assistant", "content": " rouge\n"},
]


def chat(tokenizer, messages=CONVERSATION, **options):
    ((ids, labels),) = tokenize(make_chat(tokenizer, **options), [{"messages": messages}])
    return ids, labels


def make_chat(tokenizer, **options):
    from kubetune.data.formats.chat_template import ChatTemplate

    chat_template = options.pop("top_level_template", None)
    train_on_inputs = options.pop("train_on_inputs", False)
    return ChatTemplate(tokenizer, options, chat_template=chat_template, train_on_inputs=train_on_inputs)


@pytest.mark.parametrize(
    ("train_on_eos", "expected"),
    [
        ("turn", ["six<|im_end|>", " rouge\n<|im_end|>"]),
        ("none", ["six", " rouge\n"]),
        ("last", ["six", " rouge\n<|im_end|>"]),
        ("all", ["<|im_end|>", "<|im_end|>", "six<|im_end|>", "<|im_end|>", " rouge\n<|im_end|>"]),
    ],
)
def test_chat_trains_assistant_turns_and_end_of_turn_per_train_on_eos(tokenizer, train_on_eos, expected):
    ids, labels = chat(tokenizer, train_on_eos=train_on_eos)
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(ids) == rendered
    assert decoded_spans(tokenizer, labels) == expected


def test_chat_roles_to_train_and_per_message_training_flag(tokenizer):
    _, labels = chat(tokenizer, roles_to_train=["assistant", "user"])
    assert decoded_spans(tokenizer, labels) == [
        "Spell the digit. 6<|im_end|>",
        "six<|im_end|>",
        "Translate the colour to French. red<|im_end|>",
        " rouge\n<|im_end|>",
    ]
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["training"] = False
    _, labels = chat(tokenizer, messages)
    assert decoded_spans(tokenizer, labels) == [" rouge\n<|im_end|>"]


def test_chat_sharegpt_fields_give_the_same_tokens_as_openai_messages(tokenizer):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = [{"from": names[m["role"]], "value": m["content"]} for m in CONVERSATION]
    fmt = make_chat(
        tokenizer, field_messages="conversations", message_field_role="from", message_field_content="value"
    )
    ((ids, labels),) = tokenize(fmt, [{"conversations": sharegpt}])
    assert (ids, labels) == chat(tokenizer)
    # A custom role spelling through the roles mapping.
    bot = [
        {"role": "bot" if m["role"] == "assistant" else m["role"], "content": m["content"]}
        for m in CONVERSATION
    ]
    assert chat(tokenizer, bot, roles={"assistant": ["bot"]}) == chat(tokenizer)


def test_chat_named_llama3_template_trims_content_and_trains_eot(tokenizer):
    tok = _with_llama3_specials(tokenizer)  # a copy: the session tokenizer stays as it is
    ids, labels = chat(tok, top_level_template="llama3")
    text = tok.decode(ids)
    assert text.startswith("<s><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>")
    assert decoded_spans(tok, labels) == ["six<|eot_id|>", "rouge<|eot_id|>"]  # llama3 trims content


def _with_llama3_specials(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    specials = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    return tok


def test_chat_template_that_rewrites_content_is_refused(tokenizer):
    upper = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] | upper + '\n' }}{% endfor %}"
    fmt = make_chat(tokenizer, chat_template_jinja=upper)
    with pytest.raises(RowProblem, match="changes message contents"):
        fmt.tokenize_rows([{"messages": CONVERSATION}])


def test_chat_row_problems_name_the_row(tokenizer):
    fmt = make_chat(tokenizer)
    rows = [{"messages": CONVERSATION}, {"messages": [{"role": "user"}]}]
    with pytest.raises(RowProblem, match=r"row 1: messages\[0\] needs string fields 'role' and 'content'"):
        fmt.tokenize_rows(rows)


# -- custom formats ----------------------------------------------------------------------------

# The documented example of the extension point (kubetune.data.formats.base), run as written.
DOCUMENTED_FORMAT = textwrap.dedent(
    base_module.__doc__.split("`type: my_module.MyFormat`:")[1].split("\n\nOverride")[0]
)

CUSTOM_MODULE = (
    DOCUMENTED_FORMAT
    + '''


class Reversed(PromptFormat):
    """A tokenize_row format: the answer's ids reversed, all trained."""

    def tokenize_row(self, row):
        ids = self.tokenizer(row["answer"], add_special_tokens=False)["input_ids"][::-1]
        return {"input_ids": self.bos_ids + ids, "labels": [-100] + ids}


class NotAFormat:
    pass
'''
)


def custom_cfg(tmp_path, type_name):
    (tmp_path / "my_formats.py").write_text(CUSTOM_MODULE)
    cfg = train_config(tmp_path, datasets=[{"path": "data.jsonl", "type": type_name}])
    return cfg, cfg.datasets[0]


def test_custom_format_from_the_config_directory(tmp_path, tokenizer):
    cfg, entry = custom_cfg(tmp_path, "my_formats.QuestionAnswer")
    fmt = make_format(entry, "datasets[0]", cfg, tokenizer)
    ((ids, labels),) = tokenize(fmt, [{"question": "two plus two?", "answer": "four"}])
    assert tokenizer.decode(ids) == "<s>Question: two plus two?\nAnswer: four</s>"
    assert decoded_spans(tokenizer, labels) == [" four</s>"]

    cfg, entry = custom_cfg(tmp_path, "my_formats.Reversed")
    ((ids, labels),) = tokenize(make_format(entry, "datasets[0]", cfg, tokenizer), [{"answer": "red green"}])
    forward = tokenizer("red green", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.bos_token_id] + forward[::-1] and labels == [IGNORE_INDEX] + forward[::-1]


@pytest.mark.parametrize(
    ("type_name", "message", "fix"),
    [
        ("my_formats.Missing", "has no class 'Missing'", "QuestionAnswer, Reversed"),
        (
            "my_formats.NotAFormat",
            "not a subclass of kubetune.data.formats.PromptFormat",
            "subclass PromptFormat",
        ),
        (
            "no_such_module.Format",
            "cannot import module 'no_such_module'",
            "no_such_module.py next to the config",
        ),
    ],
)
def test_unusable_format_names_the_dataset_and_the_fix(tmp_path, tokenizer, type_name, message, fix):
    cfg, entry = custom_cfg(tmp_path, type_name)
    with pytest.raises(DataError) as caught:
        make_format(entry, "datasets[0]", cfg, tokenizer)
    (problem,) = caught.value.problems
    assert problem.path == "datasets[0].type"
    assert message in problem.message
    assert fix in problem.fix


def test_an_unknown_builtin_type_names_the_nearest():
    # The schema refuses it when the config loads (make_format takes a loaded config); the format
    # resolver, which custom-format lookups share, says the same with the nearest name.
    with pytest.raises(DataError) as caught:
        resolve_format("alpacca", path="datasets[0].type", source_dir=None)
    (problem,) = caught.value.problems
    assert problem.path == "datasets[0].type"
    assert "unknown dataset type 'alpacca'" in problem.message
    assert "did you mean 'alpaca'?" in problem.fix


def test_empty_and_untrained_examples_count_zero_trained_tokens(tokenizer):
    rows = [
        {"segments": [{"text": "", "label": True}]},  # no tokens at all
        {"segments": [{"text": "red green", "label": False}]},
        {"segments": [{"text": "<s>red", "label": False}, {"text": " green", "label": True}]},
    ]
    examples = InputOutput(tokenizer, {}).tokenize_rows(rows)
    assert examples.lengths[0] == 0
    assert examples.trained_per_example.tolist() == [
        0,
        0,
        len(tokenizer(" green", add_special_tokens=False)["input_ids"]),
    ]


def test_a_segment_must_be_text_or_token_ids(tokenizer):
    from kubetune.data.formats import PromptFormat

    class Careless(PromptFormat):
        def segments(self, row):
            return [(tokenizer.bos_token_id, False), (row["text"], True)]  # an int, not [int]

    with pytest.raises(RowProblem, match="row 1: a segment is text or a list of token ids, not int"):
        Careless(tokenizer).tokenize_rows([{"text": "a"}, {"text": "b"}], first_index=1)
