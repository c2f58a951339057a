"""Streaming JSON: records out of a JSON array, a stream of JSON values, or JSON lines.

LLaVA-665K ships as one ~1 GB JSON array. ``json.load`` would hold the whole text plus
every parsed record at once (several GB). Here the file is read in buffered chunks and
each element is decoded with :meth:`json.JSONDecoder.raw_decode`, so memory holds one
buffer plus the record being decoded. That is all this needs, so no dependency (ijson).
"""

from __future__ import annotations

import json
import re
from typing import Any, BinaryIO, Iterator, TextIO

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()

DEFAULT_BUF_CHARS = 1 << 20
DEFAULT_MAX_RECORD_CHARS = 256 << 20


class JSONStreamError(ValueError):
    """The file is not the JSON it claims to be; the message gives the offset and a fix."""


def _maybe_cut(obj: Any, buf: str, end: int) -> bool:
    """Whether a decoded value may continue past the buffer: only numbers are ambiguous
    ("-0." decodes as -0, "12" may be "123"); strings, objects and arrays end with a
    closing character."""
    if end >= len(buf):
        return True
    return isinstance(obj, (int, float)) and not isinstance(obj, bool) and buf[end] in _NUMBER_CHARS


_NUMBER_CHARS = frozenset("0123456789.eE+-")


class _Buffer:
    """A sliding window over a text stream: reads on demand, forgets what was consumed."""

    def __init__(self, f: TextIO, buf_chars: int):
        self.f, self.buf_chars = f, buf_chars
        self.buf, self.pos, self.eof = "", 0, False
        self.dropped = 0  # characters discarded before ``buf`` (for error offsets)

    def more(self) -> bool:
        """Read another chunk; False at end of file."""
        if self.eof:
            return False
        if self.pos:
            self.dropped += self.pos
            self.buf, self.pos = self.buf[self.pos:], 0
        # Read at least as much as is pending, so a huge record is re-decoded only
        # O(log size) times instead of once per chunk.
        data = self.f.read(max(self.buf_chars, len(self.buf)))
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def peek(self) -> str:
        """The next non-whitespace character, consuming the whitespace; "" at EOF."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def value(self, name: str, index: int, max_record_chars: int) -> Any:
        """Decode one JSON value starting at ``pos`` (after ``peek``)."""
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
                if self.eof or not _maybe_cut(obj, self.buf, end):
                    self.pos = end
                    return obj
            except json.JSONDecodeError as e:
                if self.eof:
                    raise JSONStreamError(
                        f"{name}: invalid JSON in record {index} at character "
                        f"{self.dropped + e.pos}: {e.msg}") from None
                if len(self.buf) - self.pos > max_record_chars:
                    raise JSONStreamError(
                        f"{name}: record {index} is not valid JSON within "
                        f"{max_record_chars} characters (at character "
                        f"{self.dropped + self.pos}); the file is probably corrupt") from None
            self.more()


def iter_json_values(f: TextIO, *, name: str = "<stream>", buf_chars: int = DEFAULT_BUF_CHARS,
                     max_record_chars: int = DEFAULT_MAX_RECORD_CHARS) -> Iterator[Any]:
    """Yield the elements of a top-level JSON array, one at a time.

    A file that does not start with ``[`` is read as a sequence of whitespace-separated
    JSON values instead (JSON lines, or one pretty-printed object), each one yielded.
    """
    b = _Buffer(f, buf_chars)
    if b.peek() == "\ufeff":  # a UTF-8 byte-order mark read as text
        b.pos += 1
    first = b.peek()
    if first != "[":
        index = 0
        while b.peek():
            yield b.value(name, index, max_record_chars)
            index += 1
        return
    b.pos += 1
    if b.peek() == "]":
        b.pos += 1
    else:
        index = 0
        while True:
            if not b.peek():
                raise JSONStreamError(f"{name}: file ends inside the JSON array after "
                                      f"{index} records (truncated download?)")
            yield b.value(name, index, max_record_chars)
            index += 1
            c = b.peek()
            if c == ",":
                b.pos += 1
            elif c == "]":
                b.pos += 1
                break
            elif not c:
                raise JSONStreamError(f"{name}: file ends inside the JSON array after "
                                      f"{index} records (truncated download?)")
            else:
                raise JSONStreamError(f"{name}: expected ',' or ']' after record {index - 1} "
                                      f"at character {b.dropped + b.pos}, found {c!r}")
    if b.peek():
        raise JSONStreamError(f"{name}: unexpected data after the closing ']' at character "
                              f"{b.dropped + b.pos}")


def iter_json_lines(f: BinaryIO) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_index, record, error)`` for each non-blank line of a JSONL file.

    A line that does not parse gives ``(i, raw_text, reason)`` rather than raising, so one
    bad line is quarantined and the rest of the file still loads. ``line_index`` is
    0-based and counts blank lines, so it points at the line in an editor (``+1``).
    """
    for i, line in enumerate(f):
        if not line.strip():
            continue
        try:
            try:
                rec = json.loads(line)
            except UnicodeDecodeError:
                # Not UTF-8: parse it with the bad bytes as lone surrogates, so validation
                # quarantines the record ("bad encoding") with the reason and the fix.
                rec = json.loads(line.decode("utf-8", errors="surrogateescape"))
        except (ValueError, RecursionError) as e:  # JSONDecodeError, deep nesting
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            yield i, text, f"invalid json: {e}"
            continue
        yield i, rec, None
