"""tokenizer_use_mistral_common: the tokenizer from a local tekken.json, conversations encoded by
mistral-common's chat-completion encoder, and exactly the assistant turns trained (as Axolotl masks)."""

from __future__ import annotations

import pytest
from kubetune.data import DataError, load_tokenizer
from kubetune.data.cache import tokenizer_fingerprint
from kubetune.data.formats.base import RowProblem
from kubetune.data.pipeline import make_format
from kubetune.tiny import _corpus, alpaca_rows, chat_rows, write_tekken

from .conftest import entry as dataset
from .conftest import example, train_config, trained_spans

CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Spell the digit. 3"},
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "Spell the digit. 4"},
        {"role": "assistant", "content": "four"},
    ]
}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mistral")
    write_tekken(directory / "tekken.json", _corpus(alpaca_rows(200)))
    return directory


def mistral_config(model_dir):
    return train_config(base_model=str(model_dir), tokenizer_use_mistral_common=True)


@pytest.fixture(scope="session")
def mistral(model_dir):
    return load_tokenizer(mistral_config(model_dir))


def tokenize(tokenizer, rows, **entry):
    fmt = make_format(dataset(type="chat_template", **entry), "datasets[0]", train_config(), tokenizer)
    return fmt.tokenize_rows(rows)


def spans(tokenizer, examples, k=0) -> list[str]:
    _, labels = example(examples, k)
    return [tokenizer.decode(span, skip_special_tokens=False) for span in trained_spans(labels)]


def test_the_tokenizer_is_mistral_commons_in_fine_tuning_mode(mistral):
    assert type(mistral).__name__ == "MistralCommonBackend"
    assert mistral.mode.value == "finetuning"
    assert (mistral.bos_token, mistral.eos_token, mistral.pad_token) == ("<s>", "</s>", "<pad>")
    assert len(mistral) == mistral.tokenizer.instruct_tokenizer.tokenizer.n_words


def test_the_conversation_is_mistral_commons_encoding_and_the_assistant_turns_are_trained(mistral):
    examples = tokenize(mistral, [CONVERSATION])
    input_ids, _ = example(examples, 0)
    assert input_ids == mistral.apply_chat_template(
        CONVERSATION["messages"], tokenize=True, return_dict=False
    )
    assert mistral.decode(input_ids, skip_special_tokens=False) == (
        "<s>[SYSTEM_PROMPT]You are terse.[/SYSTEM_PROMPT][INST]Spell the digit. 3[/INST]three</s>"
        "[INST]Spell the digit. 4[/INST]four</s>"
    )
    assert spans(mistral, examples) == ["three</s>", "four</s>"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"train_on_eos": "none"}, ["three", "four"]),
        ({"train_on_eos": "last"}, ["three", "four</s>"]),
        ({"train_on_eos": "all", "message_field_training": "train"}, ["</s>", "four</s>"]),
    ],
)
def test_train_on_eos_and_per_message_training(mistral, entry, expected):
    row = {"messages": [dict(m) for m in CONVERSATION["messages"]]}
    row["messages"][2]["train"] = False  # read only where message_field_training names it
    assert spans(mistral, tokenize(mistral, [row], **entry)) == expected


def test_sharegpt_rows_map_roles_and_fields(mistral):
    row = {
        "conversations": [{"from": "human", "value": "Spell the digit. 5"}, {"from": "gpt", "value": "five"}]
    }
    entry = {
        "field_messages": "conversations",
        "message_property_mappings": {"role": "from", "content": "value"},
    }
    assert spans(mistral, tokenize(mistral, [row], **entry)) == ["five</s>"]


def test_reasoning_chunks_and_field_thinking_are_trained_with_the_answer(mistral):
    chunks = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Spell the digit. 6"}]},
            {
                "role": "assistant",
                "content": [{"type": "thinking", "thinking": "6 is six"}, {"type": "text", "text": "six"}],
            },
        ]
    }
    trace = {
        "messages": [
            {"role": "user", "content": "Spell the digit. 6"},
            {"role": "assistant", "content": "six", "reasoning_content": "6 is six"},
        ]
    }
    for row in (chunks, trace):
        examples = tokenize(mistral, [row])
        assert spans(mistral, examples) == ["[THINK]6 is six[/THINK]six</s>"]
        assert mistral.decode(example(examples, 0)[0], skip_special_tokens=False).startswith(
            "<s>[INST]Spell the digit. 6[/INST][THINK]"
        )


def test_train_on_inputs_trains_every_token_after_the_first(mistral):
    fmt = make_format(
        dataset(type="chat_template"), "datasets[0]", train_config(train_on_inputs=True), mistral
    )
    input_ids, labels = example(fmt.tokenize_rows([CONVERSATION]), 0)
    assert labels == [-100, *input_ids[1:]]


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([{"role": "user", "content": "x"}], "Expected last role Assistant"),
        (
            [{"role": "user", "content": "x", "training": True}, {"role": "assistant", "content": "y"}],
            "trained user",
        ),
        (
            [
                {"role": "user", "content": [{"type": "image_url", "image_url": "u"}]},
                {"role": "assistant", "content": "y"},
            ],
            "images and audio need a processor",
        ),
    ],
)
def test_rows_mistral_common_cannot_train_name_the_reason(mistral, messages, problem):
    with pytest.raises(RowProblem, match=problem):
        tokenize(mistral, [{"messages": messages}])


def test_alpaca_and_completion_rows_train_their_output_with_the_tekken_vocabulary(mistral):
    row = alpaca_rows(1)[0]
    alpaca = make_format(dataset(type="alpaca"), "datasets[0]", train_config(), mistral).tokenize_rows([row])
    assert spans(mistral, alpaca) == [row["output"] + "</s>"]
    assert example(alpaca, 0)[0][0] == mistral.bos_token_id
    completion = make_format(
        dataset(type="completion"), "datasets[0]", train_config(), mistral
    ).tokenize_rows([{"text": "one two"}])
    assert mistral.decode(example(completion, 0)[0], skip_special_tokens=False) == "<s>one two</s>"


def test_a_template_subclass_is_refused_for_a_mistral_common_tokenizer(mistral, tmp_path):
    (tmp_path / "my_formats.py").write_text(
        "from kubetune.data.formats.chat_template import ChatTemplate\nclass Mine(ChatTemplate):\n    pass\n"
    )
    with pytest.raises(DataError, match="use type: chat_template"):
        cfg = train_config(tmp_path, datasets=[{"path": "data.jsonl", "type": "my_formats.Mine"}])
        make_format(cfg.datasets[0], "datasets[0]", cfg, mistral)


def test_a_directory_without_a_mistral_tokenizer_file_is_refused_with_the_fix(tmp_path):
    with pytest.raises(DataError) as caught:
        load_tokenizer(mistral_config(tmp_path))
    [problem] = caught.value.problems
    assert problem.path == "tokenizer_use_mistral_common"
    assert "tekken.json" in problem.fix


def test_the_cache_fingerprint_follows_the_tokenizer_file(mistral, model_dir, tmp_path):
    other = tmp_path / "other"
    write_tekken(other / "tekken.json", [" ".join(r["messages"][1]["content"] for r in chat_rows(50))])
    changed = load_tokenizer(mistral_config(other))
    same = load_tokenizer(mistral_config(model_dir))
    assert tokenizer_fingerprint(mistral) == tokenizer_fingerprint(same) != tokenizer_fingerprint(changed)


def test_off_a_mistral_model_keeps_the_transformers_tokenizer_autotokenizer_would_replace(
    model_dir, tmp_path
):
    import shutil

    from transformers import AutoTokenizer, MistralConfig

    directory = tmp_path / "mistral-model"
    shutil.copytree(model_dir, directory)
    MistralConfig(vocab_size=512).save_pretrained(directory)  # a Mistral architecture beside tekken.json
    assert type(AutoTokenizer.from_pretrained(directory)).__name__ == "MistralCommonBackend"
    loaded = load_tokenizer(train_config(base_model=str(directory), special_tokens={"pad_token": "<pad>"}))
    assert type(loaded).__name__ == "TokenizersBackend"  # editable: special_tokens applied
    assert loaded.pad_token == "<pad>"
