"""kubetune.tiny's tokenizer carries kubetune.data's ChatML template, and importing tiny stays light."""

from __future__ import annotations

import subprocess
import sys

from kubetune.data.formats.named_templates import CHATML


def test_tiny_tokenizer_template_is_the_named_chatml(tokenizer):
    assert tokenizer.chat_template == CHATML


def test_importing_tiny_loads_no_heavy_modules():
    probe = "import sys, kubetune.tiny; print(sorted(m for m in ('numpy', 'transformers', 'kubetune.data') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
