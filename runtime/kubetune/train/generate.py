"""`kubetune generate`: a sample from the trained result, prompted the way the data was formatted."""

from __future__ import annotations

from typing import cast

import torch

from kubetune.train.results import load_result


def format_prompt(cfg, tokenizer, prompt: str, template: str = "auto") -> str | list[int]:
    """The prompt as training saw prompts: alpaca scaffolding, the chat template, or the raw text."""
    if template == "auto":
        kind = cfg.datasets[0].type if cfg.datasets else None
        template = {"alpaca": "alpaca", "chat_template": "chat"}.get(kind or "", "raw")
    if template == "alpaca":
        from kubetune.data.formats.instruct import ALPACA_NO_INPUT

        return ALPACA_NO_INPUT.format(instruction=prompt)
    if template == "chat":
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    return prompt


def generate(
    cfg, prompt: str, *, max_new_tokens: int = 64, template: str = "auto", temperature: float = 0.0
) -> str:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_result(cfg, device=device)
    text = format_prompt(cfg, tokenizer, prompt, template)
    ids = text if isinstance(text, list) else tokenizer(text)["input_ids"]
    input_ids = torch.tensor([ids], device=device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        # transformers 5.17 types generate with `self` twice (its decorators), which no call satisfies.
        out = model.generate(  # type: ignore[misc]
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
    # One sequence of ids decodes to one string (a batch would decode to a list).
    return cast(str, tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True))
