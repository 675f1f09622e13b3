"""Exact reuse of a fixed prompt prefix's tokens: tokens(prefix + text) == tokens(prefix) + tokens(text).

The alpaca prompt starts with ~150 characters that are the same on every row ("Below is an
instruction ... ### Instruction:\\n"); encoding them once instead of per row removes about 30% of
the tokenizer's work. It is only done where the split is provably the same as the joint encoding:

* no normalizer (it could rewrite text across the junction), a BPE model (merges never cross
  pre-token boundaries), no prefix space added to a text on its own;
* a pre-tokenizer whose splits come from one of the known lookbehind-free regexes (GPT-2's, as in
  ByteLevel(use_regex=True), or Llama 3's / GPT-4's Split pattern): every alternative is a run of
  one character class with at most one optional leading character, a bounded digit or
  contraction match, and at most one character of lookahead. Once a piece ends at position p, the
  pieces after p are those of the string from p on, pre-tokenized alone;
* per row, the pre-tokenizer run over a window (the prefix's last pieces + the text's first
  WINDOW characters) must reproduce the prefix's own last pieces, put a boundary exactly at the
  junction and, when the text is longer than the window, one more boundary inside the window (so
  the run the junction starts in ends before the window does and nothing beyond it is looked at);
* no added token (special or user) could match across the junction.

Rows failing a check are encoded jointly, as before. The decision depends only on the text's
first WINDOW characters (and whether it is longer), so it is cached per distinct head.
"""

from __future__ import annotations

import json

WINDOW = 24
TAIL_PIECES = 3
_MAX_CACHE = 200_000

# Split patterns whose structure the argument above was made for (Llama 3's, which is GPT-4's cl100k).
_KNOWN_SPLIT_PATTERNS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def _pre_tokenizer_ok(pre) -> bool:
    if not isinstance(pre, dict):
        return False
    kind = pre.get("type")
    if kind == "Sequence":
        return bool(pre.get("pretokenizers")) and all(_pre_tokenizer_ok(p) for p in pre["pretokenizers"])
    if kind == "ByteLevel":
        return not pre.get("add_prefix_space", False)
    if kind == "Split":
        pattern = pre.get("pattern") or {}
        return (
            pre.get("behavior") == "Isolated"
            and not pre.get("invert", False)
            and pattern.get("Regex") in _KNOWN_SPLIT_PATTERNS
        )
    return False


def splittable(backend) -> bool:
    """Whether `backend` (a tokenizers.Tokenizer) qualifies for prefix reuse at all."""
    try:
        state = json.loads(backend.to_str())
    except (ValueError, TypeError, AttributeError):  # cannot describe itself: encoded jointly
        return False
    return (
        state.get("normalizer") is None
        and (state.get("model") or {}).get("type") == "BPE"
        and _pre_tokenizer_ok(state.get("pre_tokenizer"))
    )


class PrefixSplit:
    """Decides, per text, whether tokens(prefix + text) may be taken as prefix_ids + tokens(text)."""

    def __init__(self, backend, prefix: str):
        self.pre_tokenize = backend.pre_tokenizer.pre_tokenize_str
        self.prefix = prefix
        self.prefix_ids = list(backend.encode(prefix, add_special_tokens=False).ids)
        pieces = [offsets for _, offsets in self.pre_tokenize(prefix)]
        if not pieces or pieces[-1][1] != len(prefix):
            raise ValueError("the prefix does not pre-tokenize to pieces covering it")
        tail_start = pieces[-TAIL_PIECES][0] if len(pieces) >= TAIL_PIECES else 0
        self.tail = prefix[tail_start:]
        self.tail_pieces = [(s - tail_start, e - tail_start) for s, e in pieces if s >= tail_start]
        self.added = [token.content for token in backend.get_added_tokens_decoder().values() if token.content]
        # Added tokens are cut out before pre-tokenizing, ending the text around them like a string
        # end: a row whose head holds one (or part of one at the junction) is encoded jointly. The
        # cache key is long enough to see any added token that starts inside the window.
        self.key_len = WINDOW + max((len(content) for content in self.added), default=0)
        self.usable = not any(content in prefix for content in self.added)
        self._cache: dict[tuple[str, bool], bool] = {}

    def ok(self, text: str) -> bool:
        key = (text[: self.key_len], len(text) > self.key_len)
        known = self._cache.get(key)
        if known is None:
            known = self._check(*key)
            if len(self._cache) < _MAX_CACHE:
                self._cache[key] = known
        return known

    def _check(self, key: str, longer: bool) -> bool:
        junction = len(self.tail)
        if not self.usable or self._added_token_touches(key):
            return False
        if not key:
            return True  # an empty text adds nothing
        head = key[:WINDOW]
        truncated = longer or len(key) > WINDOW
        offsets = [offsets for _, offsets in self.pre_tokenize(self.tail + head)]
        before = [piece for piece in offsets if piece[0] < junction]
        after = [piece for piece in offsets if piece[0] >= junction]
        if before != self.tail_pieces or not after or after[0][0] != junction:
            return False
        return not (truncated and len(after) < 2)

    def _added_token_touches(self, key: str) -> bool:
        """Whether an added token occurs in prefix + key anywhere past the prefix's own text."""
        joined = self.prefix + key
        for content in self.added:
            start = joined.find(content, max(0, len(self.prefix) - len(content) + 1))
            if start != -1:
                return True
        return False
