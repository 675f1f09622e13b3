"""The chat templates kubetune ships by name (`chat_template: <name>`), written from each model
family's published turn format. They render text conversations: string contents, the roles
system / user / assistant, and (qwen3, qwen3_5) an assistant's reasoning in `reasoning_content`.
Each inserts a message's content verbatim or trimmed, so the data pipeline can locate the trained
spans exactly (formats/chat_template.py). Conversations they cannot render (a system message
where the family has none, tool turns) fail with the template's own message, naming the row.

`tokenizer_default` is usually the better choice when the model's tokenizer ships a template;
these exist for tokenizers that do not (base models) and for configs written for Axolotl.
"""

from __future__ import annotations

# <|im_start|>role\ncontent<|im_end|>\n
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# bos, then <|start_header_id|>role<|end_header_id|>\n\ncontent (trimmed)<|eot_id|>
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Llama 4: bos, then <|header_start|>role<|header_end|>\n\ncontent (trimmed)<|eot|>; tool turns are `ipython`.
LLAMA4 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "{{ '<|header_start|>' + role + '<|header_end|>\n\n' + message['content'] | trim + '<|eot|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|header_start|>assistant<|header_end|>\n\n' }}{% endif %}"
)

_NO_TOOLS = (
    "{{ raise_exception('this template renders no tool turns; use chat_template: tokenizer_default') }}"
)

# Gemma (1, 2): bos, <start_of_turn>user|model\ncontent (trimmed)<end_of_turn>\n; no system role.
GEMMA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('Gemma has no system role: drop the system "
    "message (drop_system_message: true) or use chat_template: gemma3') }}{% endif %}"
    "{% if message['role'] == 'tool' %}" + _NO_TOOLS + "{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Gemma 3 / 3n: Gemma's turns; a leading system message opens the first turn, followed by a blank line.
GEMMA3 = (
    "{{ bos_token }}{% set state = namespace(prefix='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if not loop.first %}{{ raise_exception('Gemma 3 takes a system message only as the first message') }}"
    "{% endif %}{% set state.prefix = message['content'] + '\n\n' %}"
    "{% else %}"
    "{% if message['role'] == 'tool' %}" + _NO_TOOLS + "{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + state.prefix + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% set state.prefix = '' %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Gemma 4: bos, <|turn>system|user|model\ncontent (trimmed)<turn|>\n; the generation prompt opens an
# empty thought channel (thinking off).
GEMMA4 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'tool' %}" + _NO_TOOLS + "{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<|turn>' + role + '\n' + message['content'] | trim + '<turn|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|turn>model\n<|channel>thought\n<channel|>' }}{% endif %}"
)

# Phi-3: bos, <|system|>\n ... <|end|>\n, <|user|>\n ... <|end|>\n, <|assistant|>\n ... <|end|>\n
PHI_3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'tool' %}" + _NO_TOOLS + "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Falcon-H1: bos, then ChatML turns.
FALCON_H1 = "{{ bos_token }}" + CHATML

# Qwen 2.5: ChatML with Qwen's default system message when the conversation has none.
QWEN_25 = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'tool' %}" + _NO_TOOLS + "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen 3: ChatML; an assistant turn after the last user message carries its reasoning as
# <think>\n...\n</think>\n\n before the content (always for the final message, empty if it has
# none); reasoning of earlier turns is not shown, as Qwen 3 does.
_QWEN3_TURNS = (
    "{% set state = namespace(last_user=-1) %}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set state.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}" + _NO_TOOLS + "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{% set reasoning = message['reasoning_content'] if message['reasoning_content'] is string else '' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% if loop.index0 > state.last_user and (loop.last or reasoning) %}"
    "{{ '<think>\n' + reasoning + '\n</think>\n\n' }}{% endif %}"
    "{{ message['content'] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
)
QWEN3 = (
    _QWEN3_TURNS + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)
# Qwen 3.5: Qwen 3's turns; the generation prompt opens the thinking block itself.
QWEN3_5 = (
    _QWEN3_TURNS + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}"
    "{% else %}{{ '<think>\n\n' }}{% endif %}{% endif %}"
)

# Command-R (cohere): bos, <|START_OF_TURN_TOKEN|> + <|SYSTEM_TOKEN|> / <|USER_TOKEN|> / <|CHATBOT_TOKEN|>,
# content (user and assistant trimmed), <|END_OF_TURN_TOKEN|>.
COHERE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + message['content'] + '<|END_OF_TURN_TOKEN|>' }}"
    "{% elif message['role'] == 'tool' %}" + _NO_TOOLS + "{% else %}"
    "{% set token = '<|CHATBOT_TOKEN|>' if message['role'] == 'assistant' else '<|USER_TOKEN|>' %}"
    "{{ '<|START_OF_TURN_TOKEN|>' + token + message['content'] | trim + '<|END_OF_TURN_TOKEN|>' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}"
)

# DeepSeek-V2(.5): bos, a system message followed by a blank line, <｜User｜>content, <｜Assistant｜>content + eos.
DEEPSEEK_V2 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + eos_token }}"
    "{% else %}" + _NO_TOOLS + "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

# Jamba 1.5: bos, then <|bom|><|role|> content<|eom|> for each message (system, user, assistant); the
# generation prompt is <|bom|><|assistant|> (the reply brings its own leading space). AI21's documents,
# tool and output-mode blocks are not rendered.
JAMBA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ('system', 'user', 'assistant') %}" + _NO_TOOLS + "{% endif %}"
    "{{ '<|bom|><|' + message['role'] + '|> ' + message['content'] + '<|eom|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|bom|><|assistant|>' }}{% endif %}"
)


def _mistral(inst_open: str, inst_close: str, reply: str, system_in: str) -> str:
    """Mistral's [INST] turns: bos, user turns `inst_open`content`inst_close`, replies `reply` (a Jinja
    expression of `content`) + eos; a system message (first only) opens the `system_in` ("first" or
    "last") user turn, followed by a blank line."""
    return (
        "{{ bos_token }}{% set state = namespace(system='', first=-1, last=-1) %}"
        "{% for message in messages %}{% if message['role'] == 'user' %}"
        "{% if state.first < 0 %}{% set state.first = loop.index0 %}{% endif %}"
        "{% set state.last = loop.index0 %}{% endif %}{% endfor %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}"
        "{% if not loop.first %}{{ raise_exception('a system message may only come first') }}{% endif %}"
        "{% set state.system = message['content'] + '\\n\\n' %}"
        "{% elif message['role'] == 'user' %}"
        "{{ '" + inst_open + "' + (state.system if loop.index0 == state." + system_in + " else '')"
        " + message['content'] + '" + inst_close + "' }}"
        "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
        "{{ " + reply + " + eos_token }}"
        "{% else %}" + _NO_TOOLS + "{% endif %}{% endfor %}"
    )


# Mistral v1 (7B v0.1): ` [INST] ... [/INST]`, reply ` content</s>`; the system message opens the first turn.
MISTRAL_V1 = _mistral(" [INST] ", " [/INST]", "' ' + content", "first")
# Mistral v2/v3 (SentencePiece): `[INST] ...[/INST]`, reply ` content (trimmed)</s>`; system in the last turn.
MISTRAL_V2V3 = _mistral("[INST] ", "[/INST]", "' ' + content | trim", "last")
# Mistral v3 Tekken (Nemo): `[INST]...[/INST]`, reply `content</s>`; system in the last user turn.
MISTRAL_V3_TEKKEN = _mistral("[INST]", "[/INST]", "content", "last")
# Mistral v7 Tekken (Small 3): bos, `[SYSTEM_PROMPT]...[/SYSTEM_PROMPT]`, `[INST]...[/INST]`, reply `content</s>`.
# No default system message (Mistral's names today's date, which would change the data every day).
MISTRAL_V7_TEKKEN = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST]' + message['content'] + '[/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}" + _NO_TOOLS + "{% endif %}{% endfor %}"
)

NAMED_TEMPLATES: dict[str, str] = {
    "chatml": CHATML,
    "llama3": LLAMA3,
    "llama4": LLAMA4,
    "gemma": GEMMA,
    "gemma3": GEMMA3,
    "gemma3n": GEMMA3,  # Gemma 3n's text turns are Gemma 3's
    "gemma4": GEMMA4,
    "phi_3": PHI_3,
    "falcon_h1": FALCON_H1,
    "qwen_25": QWEN_25,
    "qwen3": QWEN3,
    "qwen3_5": QWEN3_5,
    "cohere": COHERE,
    "deepseek_v2": DEEPSEEK_V2,
    "jamba": JAMBA,
    "mistral_v1": MISTRAL_V1,
    "mistral_v2v3": MISTRAL_V2V3,
    "mistral_v3_tekken": MISTRAL_V3_TEKKEN,
    "mistral_v7_tekken": MISTRAL_V7_TEKKEN,
}
