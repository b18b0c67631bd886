"""AVA.txt in blocks of whole lines: each block parsed into compact rows, then all of them joined.

Only ids and the 13 counts and tags of each well-formed line are kept (in the narrowest
integer type that holds a block's values): scores are computed later, row by row, from the
counts, so a large file never needs more than one block's parse plus these compact rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa

from features import files
from features.labels.ava_text import (
    FIRST_LINES,
    LOGGED_LINES,
    TAG_COLUMNS,
    VOTE_COLUMNS,
    MalformedLines,
    parse_ava_text,
)

DEFAULT_BLOCKSIZE = 1 << 19  # about 8,000 AVA lines; a block's parse takes ~13x its size
COUNT_COLUMNS = (*VOTE_COLUMNS, *TAG_COLUMNS)
_U16_MAX = int(np.iinfo(np.uint16).max)
# Bytes besides \n at which str.splitlines() also cuts an ASCII text.
_ODD_BREAKS = tuple(bytes([code]) for code in (11, 12, 13, 28, 29, 30))


@dataclass
class ParsedBlock:
    """The well-formed rows of one block of lines, and what was wrong with the others.

    Attributes:
        ids: image ids of the well-formed lines, in line order (Python strings: arrow memory
            is taken in the thread that joins the blocks, where it is freed and reused).
        counts: their 10 vote counts, 2 tags and challenge id (N x 13, uint16 or int64).
        rows: the block's non-blank lines, malformed ones included.
        malformed: the block's malformed lines (count, first line numbers and messages).
    """

    ids: np.ndarray
    counts: np.ndarray
    rows: int
    malformed: MalformedLines = field(default_factory=MalformedLines)


def decode(data: bytes) -> str:
    """UTF-8 text; bytes that are not UTF-8 are kept as escapes and make their line malformed."""
    return data.decode("utf-8", errors="surrogateescape")


def line_count(block: bytes) -> int:
    """Lines of a block as str.splitlines() counts them (without decoding plain ASCII)."""
    if block.isascii() and not any(mark in block for mark in _ODD_BREAKS):
        return block.count(b"\n") + (not block.endswith(b"\n") and bool(block))
    return len(decode(block).splitlines())


def narrow(counts: np.ndarray) -> np.ndarray:
    """Non-negative int64 counts as uint16 when they all fit (exact either way)."""
    return counts.astype(np.uint16) if counts.max(initial=0) <= _U16_MAX else counts


def parse_block(block: bytes, source: str, first_line: int) -> ParsedBlock:
    """Parse one block of whole lines of AVA.txt into compact rows.

    Args:
        block: bytes of whole lines (the last one may lack its newline).
        source: file name used in the malformed lines' messages.
        first_line: line number of the block's first line.

    Returns:
        The block's well-formed rows and its malformed lines.
    """
    frame = parse_ava_text(decode(block), source, first_line)
    bad = frame["problem"].notna().to_numpy()
    good = np.flatnonzero(~bad)
    ids = frame["image_id"].to_numpy(dtype=object)[good]
    counts = narrow(frame[list(COUNT_COLUMNS)].to_numpy(dtype=np.int64)[good])
    malformed = MalformedLines(
        int(bad.sum()),
        frame.loc[bad, "line"].head(FIRST_LINES).tolist(),
        frame.loc[bad, "problem"].head(LOGGED_LINES).tolist(),
    )
    return ParsedBlock(ids, counts, len(frame), malformed)


def read_blocks(url: str, blocksize: int) -> Iterator[tuple[bytes, int]]:
    """(block, number of its first line) of a file read sequentially, cut after a newline.

    Args:
        url: local path or fsspec URL.
        blocksize: bytes read at a time (a block is longer only if a line is).

    Returns:
        An iterator over the blocks, in file order; an empty file gives none.
    """
    first, rest = 1, b""
    with fsspec.open(files.native(url), "rb") as handle:
        while chunk := handle.read(blocksize):
            data, rest = _cut(rest + chunk)
            if data:
                yield data, first
                first += line_count(data)
    if rest:
        yield rest, first


def _cut(data: bytes) -> tuple[bytes, bytes]:
    """(whole lines, the unfinished last line) of data."""
    end = data.rfind(b"\n") + 1
    return data[:end], data[end:]


@dataclass
class AvaRows:
    """The compact rows of a whole file, in line order (the blocks joined).

    Attributes:
        ids: image ids of the well-formed lines.
        counts: their counts and tags (N x 13).
        rows: non-blank lines of the file, malformed ones included.
        malformed: the file's malformed lines.
    """

    ids: pa.Array
    counts: np.ndarray
    rows: int
    malformed: MalformedLines

    @classmethod
    def join(cls, blocks: Iterable[ParsedBlock]) -> AvaRows:
        """All blocks, in order, as one set of rows (ids become arrow strings here)."""
        ids: list[pa.Array] = []
        counts: list[np.ndarray] = []
        rows, malformed = 0, MalformedLines()
        for block in blocks:
            ids.append(pa.array(block.ids, pa.string()))
            counts.append(block.counts)
            rows += block.rows
            malformed.add(block.malformed.count, block.malformed.lines, block.malformed.problems)
        joined_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
        if not counts:
            return cls(joined_ids, np.zeros((0, len(COUNT_COLUMNS)), np.uint16), rows, malformed)
        return cls(joined_ids, np.concatenate(counts), rows, malformed)
