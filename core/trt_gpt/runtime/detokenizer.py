"""Incremental detokenization and stop strings for streamed text.

`IncrementalDetokenizer` turns a growing list of token ids into text deltas without re-decoding the whole
output each token: it decodes a short window (the tokens since the last emitted boundary, plus a few before
as context, so tokenizers that drop a leading space on a bare suffix still see it) and emits the part
beyond what that window decoded to before. A window whose text ends in U+FFFD (an incomplete UTF-8
sequence: a multi-byte character cut between tokens) is held back until the next token completes it, so
a delta never splits a character. `finish()` flushes what is held back.

`TextStream` adds OpenAI-style stop strings on top: a stop string may span token boundaries; the text is
cut before it, and while streaming the last `len(longest stop) - 1` characters are held back until they
cannot be the start of a stop string.
"""
from __future__ import annotations

from typing import Sequence

from .tokenizer import Tokenizer

CONTEXT_TOKENS = 5     # tokens of left context decoded with each window
REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Text deltas of a token stream; the deltas concatenate to the text of all the tokens."""

    def __init__(self, tokenizer: Tokenizer, context_ids: Sequence[int] = ()):
        self.tok = tokenizer
        self.ids: list[int] = [int(t) for t in context_ids[-CONTEXT_TOKENS:]]
        self.prefix = 0                 # window start: a few tokens before `read`
        self.read = len(self.ids)       # tokens up to here are in the emitted text

    def add(self, new_ids: Sequence[int]) -> str:
        """Append tokens; returns the new complete text (possibly empty)."""
        self.ids.extend(int(t) for t in new_ids)
        return self._advance(final=False)

    def finish(self) -> str:
        """The text still held back (an incomplete character at the end decodes to U+FFFD, as a full
        decode of the tokens would)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.read == len(self.ids):
            return ""
        before = self.tok.decode(self.ids[self.prefix:self.read])
        after = self.tok.decode(self.ids[self.prefix:])
        if not final and (after.endswith(REPLACEMENT) or len(after) <= len(before)):
            return ""   # an incomplete character (or no text yet): wait for the next token
        if not after.startswith(before):
            # A tokenizer whose decode is not prefix-stable over this window (normalisation across the
            # boundary): fall back to the common prefix so no character is repeated.
            i = 0
            while i < min(len(before), len(after)) and before[i] == after[i]:
                i += 1
            delta = after[i:]
        else:
            delta = after[len(before):]
        self.prefix = max(self.read, len(self.ids) - CONTEXT_TOKENS)
        self.read = len(self.ids)
        return delta


class TextStream:
    """A request's output text: incremental detokenization, stop strings, and what may be emitted now."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], stop: Sequence[str] = ()):
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""                  # all the text so far (cut at a stop string once found)
        self.emitted = 0                # characters of `text` already handed out
        self.stopped: str | None = None  # the stop string that ended the text

    def add(self, new_ids: Sequence[int], final: bool = False) -> str:
        """Feed new tokens; returns the text that may be emitted now. After a stop string is found
        (`stopped`), the rest is ignored and the request should end."""
        if self.stopped is not None:
            return ""
        start = max(0, len(self.text) - self.hold)
        self.text += self.detok.add(new_ids)
        if final:
            self.text += self.detok.finish()
        for s in self.stop:
            i = self.text.find(s, start)
            if i >= 0 and (self.stopped is None or i < cut):
                self.stopped, cut = s, i
        if self.stopped is not None:
            self.text = self.text[:cut]
            final = True
        end = len(self.text) if final else max(self.emitted, len(self.text) - self.hold)
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta
