"""Tiny, offline fixtures: a random-init Llama, a tokenizer trained locally, a learnable dataset.

Used by the tests, `make demo` and the CPU smoke FineTuneJob, which cannot reach a model hub:

    python -m kubetune.tiny OUT_DIR [--examples 512] [--seed 0]

writes OUT_DIR/model (config, safetensors weights, tokenizer) and OUT_DIR/data/train.jsonl
(alpaca rows). The task is learnable by a 2-layer model in a few dozen steps, so a falling
loss proves the training path works.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]

_COLOURS = {
    "red": "rouge",
    "green": "vert",
    "blue": "bleu",
    "black": "noir",
    "white": "blanc",
    "yellow": "jaune",
    "pink": "rose",
    "grey": "gris",
    "brown": "brun",
    "orange": "orange",
}
_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def alpaca_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca rows of three deterministic tasks: translate a colour, spell a digit, count on."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        task = index % 3
        if task == 0:
            word = rng.choice(sorted(_COLOURS))
            rows.append(
                {"instruction": "Translate the colour to French.", "input": word, "output": _COLOURS[word]}
            )
        elif task == 1:
            digit = rng.randrange(10)
            rows.append({"instruction": "Spell the digit.", "input": str(digit), "output": _NUMBERS[digit]})
        else:
            start = rng.randrange(20)
            length = rng.randrange(3, 8)
            rows.append(
                {
                    "instruction": "Count on from the number.",
                    "input": str(start),
                    "output": " ".join(str(start + k) for k in range(1, length + 1)),
                }
            )
    return rows


def chat_rows(count: int, seed: int = 0) -> list[dict[str, list[dict[str, str]]]]:
    """The same tasks as OpenAI-style conversations (`messages` with role/content)."""
    return [
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"{row['instruction']} {row['input']}"},
                {"role": "assistant", "content": row["output"]},
            ]
        }
        for row in alpaca_rows(count, seed)
    ]


def preference_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """`chatml.intel` pairs of the same tasks: chosen = the right answer, rejected = a wrong one of the
    kind a model that ignored the instruction gives (the colour untranslated, the digit not spelled,
    counting down instead of on), so a preference is learnable from a randomly initialised model."""
    rows = []
    for row in alpaca_rows(count, seed):
        if row["instruction"].startswith("Translate"):
            wrong = row["input"]
        elif row["instruction"].startswith("Spell"):
            wrong = row["input"]
        else:
            start = int(row["input"])
            wrong = " ".join(str(start - k) for k in range(1, len(row["output"].split()) + 1))
        rows.append(
            {
                "system": "You are terse.",
                "question": f"{row['instruction']} {row['input']}",
                "chosen": row["output"],
                "rejected": wrong,
            }
        )
    return rows


def kto_rows(count: int, seed: int = 0) -> list[dict]:
    """KTO rows (`chatml.intel` for rl: kto) of the same pairs: each prompt once with its right answer
    (label true) and once with the wrong one (label false), in a seeded shuffled order."""
    rows = []
    for pair in preference_rows(count, seed):
        prompt = {"system": pair["system"], "question": pair["question"]}
        rows += [prompt | {"completion": pair["chosen"], "label": True}]
        rows += [prompt | {"completion": pair["rejected"], "label": False}]
    order = random.Random(seed).sample(range(len(rows)), len(rows))
    return [rows[i] for i in order]


def _corpus(rows: Iterable[dict[str, str]]) -> Iterable[str]:
    for row in rows:
        yield " ".join(row.values())
    # Templates used by the data formats, so their scaffolding tokenizes compactly.
    yield "Below is an instruction that describes a task. Write a response that appropriately completes"
    yield "### Instruction:\n### Input:\n### Response:\nsystem user assistant"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer with bos/eos/pad and a ChatML template, trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # ChatML, kubetune.data's named template, as the tokenizer's own, so `chat_template:
    # tokenizer_default` works offline (imported here: importing tiny stays light).
    from kubetune.data.formats.named_templates import CHATML

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    bos = backend.token_to_id("<s>")
    # Like Llama: every encoded text starts with bos; eos is left to the data formats.
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML
    return tokenizer


# mistral-common's special tokens, in its order (tokenizer versions 13+ list them in the file).
TEKKEN_SPECIAL_TOKENS = (
    "<unk> <s> </s> [INST] [/INST] [AVAILABLE_TOOLS] [/AVAILABLE_TOOLS] [TOOL_RESULTS] [/TOOL_RESULTS] "
    "[TOOL_CALLS] [IMG] <pad> [IMG_BREAK] [IMG_END] [PREFIX] [MIDDLE] [SUFFIX] [SYSTEM_PROMPT] "
    "[/SYSTEM_PROMPT] [TOOL_CONTENT] [ARGS] [CALL_ID] [THINK] [/THINK]"
).split()
TEKKEN_PATTERN = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def write_tekken(path: Path, texts: Iterable[str], *, vocab_size: int = 512, num_special: int = 32) -> Path:
    """A small tekken.json (mistral-common's tokenizer file, version v13): byte-level BPE whose merges
    are learnt from `texts` here, plus Mistral's special tokens ([INST], [THINK], ...) as ids
    0..num_special-1, the way Mistral's files lay them out."""
    import base64

    import regex

    words: dict[bytes, int] = {}
    for text in texts:
        for word in regex.findall(TEKKEN_PATTERN, text):
            words[word.encode()] = words.get(word.encode(), 0) + 1
    vocab = [bytes([b]) for b in range(256)]
    pieces = {word: [bytes([b]) for b in word] for word in words}
    while len(vocab) < vocab_size - num_special:
        pairs: dict[tuple[bytes, bytes], int] = {}
        for word, parts in pieces.items():
            for pair in zip(parts, parts[1:], strict=False):
                pairs[pair] = pairs.get(pair, 0) + words[word]
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        vocab.append(best[0] + best[1])
        for word, parts in pieces.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            pieces[word] = merged
    model = {
        "config": {
            "pattern": TEKKEN_PATTERN,
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": len(vocab) + num_special,
            "default_num_special_tokens": num_special,
            "version": "v13",
        },
        "vocab": [
            {"rank": rank, "token_bytes": base64.b64encode(token).decode(), "token_str": None}
            for rank, token in enumerate(vocab)
        ],
        "special_tokens": [
            {"rank": rank, "token_str": token, "is_control": True}
            for rank, token in enumerate(TEKKEN_SPECIAL_TOKENS)
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(model))
    return path


def make_mistral_fixture(
    out_dir: str | os.PathLike, *, examples: int = 512, seed: int = 0, **model_kwargs
) -> dict:
    """Like make_fixture, with a mistral-common tokenizer: mistral/ (a tiny Llama whose vocabulary is a
    locally built tekken.json, saved beside it) and data/chat.jsonl; for tokenizer_use_mistral_common."""
    from transformers.tokenization_mistral_common import MistralCommonBackend

    out = Path(out_dir)
    rows = alpaca_rows(examples, seed)
    model_dir = _mkdir(out / "mistral")
    write_tekken(model_dir / "tekken.json", _corpus(rows))
    tokenizer = MistralCommonBackend.from_pretrained(str(model_dir))
    # Mistral's architecture (Llama's, as a MistralConfig): for it, AutoTokenizer also picks mistral-common.
    model = build_tiny_llama(tokenizer, seed=seed, architecture="mistral", **model_kwargs)
    model.save_pretrained(model_dir, safe_serialization=True)
    chat = write_jsonl(chat_rows(examples, seed), out / "data" / "chat.jsonl")
    train = write_jsonl(rows, out / "data" / "train.jsonl")
    return {"model": str(model_dir), "chat": str(chat), "train": str(train)}


def build_tiny_llama(
    tokenizer,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 1024,
    seed: int = 0,
    architecture: str = "llama",
):
    """A randomly initialised LlamaForCausalLM (or, with architecture="mistral", the same network as a
    MistralForCausalLM) sized for CPU tests (about 100k parameters)."""
    import torch
    import transformers

    prefix = {"llama": "Llama", "mistral": "Mistral"}[architecture]
    config_class = getattr(transformers, f"{prefix}Config")
    model_class = getattr(transformers, f"{prefix}ForCausalLM")
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return model_class(config)


def write_jsonl(rows: Iterable[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return path


def make_fixture(out_dir: str | os.PathLike, *, examples: int = 512, seed: int = 0, **model_kwargs) -> dict:
    """Write model/ (weights + tokenizer) and data/{train,chat,pairs,kto}.jsonl under out_dir."""
    out = Path(out_dir)
    rows = alpaca_rows(examples, seed)
    tokenizer = train_tokenizer(_corpus(rows))
    model = build_tiny_llama(tokenizer, seed=seed, **model_kwargs)
    model_dir = out / "model"
    # Save into a temp dir and rename, so a reader never sees half a model.
    staging = Path(tempfile.mkdtemp(dir=_mkdir(out), prefix=".model-"))
    staging.chmod(0o755)  # mkdtemp makes 0700; non-root training pods must read it
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if model_dir.exists():
        _replace_dir(staging, model_dir)
    else:
        os.replace(staging, model_dir)
    train = write_jsonl(rows, out / "data" / "train.jsonl")
    chat = write_jsonl(chat_rows(examples, seed), out / "data" / "chat.jsonl")
    pairs = write_jsonl(preference_rows(examples, seed), out / "data" / "pairs.jsonl")  # rl: dpo/orpo/simpo
    kto = write_jsonl(kto_rows(examples // 2, seed), out / "data" / "kto.jsonl")  # rl: kto
    return {
        "model": str(model_dir),
        "train": str(train),
        "chat": str(chat),
        "pairs": str(pairs),
        "kto": str(kto),
    }


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _replace_dir(new: Path, old: Path) -> None:
    import shutil

    trash = old.with_name(f".{old.name}.old")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(old, trash)
    os.replace(new, old)
    shutil.rmtree(trash, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = make_fixture(args.out_dir, examples=args.examples, seed=args.seed)
    print(json.dumps(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
