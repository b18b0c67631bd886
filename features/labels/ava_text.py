"""AVA.txt parsing: vectorised for plain ASCII text, per line otherwise; bad lines become drops."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from schemas.errors import LabelError
from schemas.labels import AVA_BINS

LOGGER = logging.getLogger(__name__)
AVA_FIELDS = 2 + AVA_BINS + 3
VOTE_COLUMNS = tuple(f"vote_{i}" for i in range(1, AVA_BINS + 1))
TAG_COLUMNS = ("semantic_tag_1", "semantic_tag_2", "challenge_id")
DEFAULT_MAX_MALFORMED_SHARE = 0.01
LOGGED_LINES = 10  # malformed lines logged one by one; the rest are counted
FIRST_LINES = 5  # line numbers of malformed lines an error names
_INT64_MAX = int(np.iinfo(np.int64).max)
_MAX_DIGITS = 18  # up to 18 decimal digits always fit in int64
# Bytes the fast path splits at; with \v, \f, \x1c-\x1f or a lone \r (which str.split() and
# str.splitlines() also cut at) the per-line path parses the text instead.
_SPACE = np.zeros(256, dtype=bool)
_SPACE[[9, 10, 13, 32]] = True
_ODD_SPACE = np.zeros(256, dtype=bool)
_ODD_SPACE[[11, 12, 28, 29, 30, 31]] = True

# (0-based line index, image id, 13 counts and tags or None, problem or None) of one line.
_Row = tuple[int, str, "list[int] | None", "str | None"]


def parse_ava_text(text: str, source: str, first_line: int = 1) -> pd.DataFrame:
    """Parse AVA.txt lines (index, id, 10 vote counts, 2 tags, challenge) into a frame.

    A malformed line (wrong field count, a non-numeric, negative or too large count or tag,
    bytes that are not UTF-8) does not raise: it becomes a row whose `problem` names source,
    line number and what is wrong (its counts are 0); drop_malformed decides what to do.

    Args:
        text: file contents, or a block of whole lines of it (undecodable bytes kept as
            surrogate escapes).
        source: file name used in the problem messages.
        first_line: line number of the first line of text (blocks of a larger file).

    Returns:
        Frame with image_id, vote_1..vote_10, semantic_tag_1, semantic_tag_2, challenge_id
        (int64), line (1-based line number) and problem (None for a well-formed line), in
        line order; blank lines give no row.
    """
    fast = _parse_fast(text)
    if fast is None:
        rows = [_parse_line(i, line) for i, line in enumerate(text.splitlines())]
        indices = np.zeros(0, dtype=np.int64)
        ids: list[str] = []
        values = np.zeros((0, AVA_FIELDS - 2), dtype=np.int64)
    else:
        indices, ids, values, flagged = fast
        lines = text.splitlines() if len(flagged) else []
        rows = [_parse_line(i, lines[i]) for i in flagged.tolist()]
    return _frame(
        indices, ids, values, [row for row in rows if row is not None], source, first_line
    )


def _frame(
    indices: np.ndarray,
    ids: list[str],
    values: np.ndarray,
    rows: list[_Row],
    source: str,
    first_line: int,
) -> pd.DataFrame:
    """Rows of the fast path and of the per-line path merged in line order."""
    extra = np.asarray(
        [counts if counts is not None else [0] * (AVA_FIELDS - 2) for _, _, counts, _ in rows],
        dtype=np.int64,
    ).reshape(len(rows), AVA_FIELDS - 2)
    all_indices = np.concatenate([indices, np.asarray([row[0] for row in rows], np.int64)])
    order = np.argsort(all_indices, kind="stable")
    block = np.concatenate([values, extra])[order]
    all_ids = [*ids, *(row[1] for row in rows)]
    problems = [None] * len(ids) + [row[3] for row in rows]
    columns: dict[str, Any] = {"image_id": [all_ids[i] for i in order.tolist()]}
    columns.update(zip((*VOTE_COLUMNS, *TAG_COLUMNS), block.T, strict=True))
    columns["line"] = all_indices[order] + first_line
    columns["problem"] = pd.Series(
        [
            None
            if problems[i] is None
            else f"{source}:{first_line + int(all_indices[i])}: {problems[i]}"
            for i in order.tolist()
        ],
        dtype=object,
    )
    return pd.DataFrame(columns)


def _parse_line(index: int, line: str) -> _Row | None:
    """One line checked field by field (None for a blank line): the reference semantics."""
    fields = line.split()
    if not fields:
        return None
    image_id = fields[1] if len(fields) > 1 else ""
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            return index, "", None, f"bytes that are not UTF-8 in {_excerpt(line)}"
    if len(fields) != AVA_FIELDS:
        return index, image_id, None, f"expected {AVA_FIELDS} fields, got {len(fields)}"
    try:
        values = [int(value) for value in fields[2:]]
    except ValueError:
        return index, image_id, None, f"non-numeric count or tag in {_excerpt(line)}"
    if min(values) < 0:
        return index, image_id, None, f"negative count or tag in {_excerpt(line)}"
    if max(values) > _INT64_MAX:
        return index, image_id, None, f"count or tag too large in {_excerpt(line)}"
    return index, image_id, values, None


def _excerpt(line: str, limit: int = 80) -> str:
    """repr of a stripped line, cut to about `limit` characters."""
    text = line.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _parse_fast(text: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray] | None:
    """Vectorised parse of plain ASCII text, or None when the per-line path must do it all.

    Accepts a line only when it has 15 fields whose counts and tags are 1-18 ASCII digits
    (which int() reads the same way); every other non-blank line is flagged for _parse_line.

    Returns:
        (0-based indices of accepted lines, their ids, their N x 13 counts and tags,
        0-based indices of flagged lines), or None.
    """
    if not text.isascii():
        return None
    data = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    returns = np.flatnonzero(data == 13)
    lone_return = np.append(data, np.uint8(0))[returns + 1] != 10
    if _ODD_SPACE[data].any() or lone_return.any():
        return None
    starts, ends, token_line = _tokens(data)
    counts = np.bincount(token_line, minlength=1)
    whole = counts[token_line] == AVA_FIELDS
    indices = token_line[whole][::AVA_FIELDS].astype(np.int64)
    del token_line
    line_starts = starts[whole].reshape(-1, AVA_FIELDS)
    del starts
    line_ends = ends[whole].reshape(-1, AVA_FIELDS)
    del ends, whole
    id_ends = line_ends[:, 1].copy()
    lengths = line_ends[:, 2:] - line_starts[:, 2:]
    del line_ends
    values, bad = _digits(data, line_starts[:, 2:], lengths)
    good = ~bad.any(axis=1)
    flagged = np.union1d(np.flatnonzero((counts != 0) & (counts != AVA_FIELDS)), indices[~good])
    ids = [
        text[start:end]
        for start, end in zip(line_starts[good, 1].tolist(), id_ends[good].tolist(), strict=True)
    ]
    return indices[good], ids, values[good], flagged.astype(np.int64)


def _tokens(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end (exclusive), 0-based line) of every token of the bytes, in order.

    Positions are int32 when the bytes allow it (less memory on 16 MB blocks).
    """
    kind = np.int32 if len(data) < np.iinfo(np.int32).max else np.int64
    # +1 where a token ends, -1 where one starts, with spaces assumed around the data.
    edges = np.diff(_SPACE[data].view(np.int8), prepend=np.int8(1), append=np.int8(1))
    starts = np.flatnonzero(edges == -1).astype(kind)
    ends = np.flatnonzero(edges == 1).astype(kind)
    del edges
    newlines = np.flatnonzero(data == 10).astype(kind)
    return starts, ends, np.searchsorted(newlines, starts).astype(kind)


def _digits(
    data: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(values, bad) of the tokens at starts/lengths: bad = not 1..18 ASCII digits."""
    bad = lengths > _MAX_DIGITS
    values = np.zeros(starts.shape, dtype=np.int64)
    lengths = np.where(bad, 0, lengths)
    padded = np.concatenate([data, np.zeros(_MAX_DIGITS, dtype=np.uint8)])
    for offset in range(int(lengths.max(initial=0))):
        active = lengths > offset
        digit = padded[starts + offset] - np.uint8(48)  # wraps: any non-digit gives > 9
        bad |= active & (digit > 9)
        np.multiply(values, 10, out=values, where=active)
        np.add(values, digit, out=values, where=active, casting="unsafe")
    return values, bad


def drop_malformed(
    frame: pd.DataFrame,
    source: str,
    max_share: float = DEFAULT_MAX_MALFORMED_SHARE,
    flag: str | None = "--max-malformed-share",
) -> tuple[pd.DataFrame, list[str]]:
    """Split off the malformed lines of a parsed AVA file, logging each as a WARNING.

    Args:
        frame: parse_ava_text's rows of a whole file (or rows derived from them).
        source: file name used in the error.
        max_share: largest tolerated share of malformed lines among non-blank lines.
        flag: the CLI flag that sets max_share, named in the error (None = none).

    Returns:
        (the well-formed rows, the malformed lines' messages in line order).

    Raises:
        LabelError: more than max_share of the lines (or every line) are malformed: probably
            not an AVA.txt, so the run stops (one line naming the count and first line numbers).
    """
    bad = frame["problem"].notna().to_numpy()
    problems = frame.loc[bad, "problem"].tolist()
    lines = frame.loc[bad, "line"].head(FIRST_LINES).tolist()
    check_malformed(
        MalformedLines(len(problems), lines, problems), len(frame), source, max_share, flag
    )
    return (frame.loc[~bad], problems) if problems else (frame, [])


@dataclass
class MalformedLines:
    """What a file's malformed lines need for the share check and the warnings.

    Attributes:
        count: malformed lines in all.
        lines: line numbers of the first FIRST_LINES of them.
        problems: messages of the first LOGGED_LINES or more of them, in line order.
    """

    count: int = 0
    lines: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, count: int, lines: list[int], problems: list[str]) -> None:
        """Count a later block's malformed lines (keeping only the first few of each list)."""
        self.count += count
        self.lines = [*self.lines, *lines][:FIRST_LINES]
        self.problems = [*self.problems, *problems][:LOGGED_LINES]


def check_malformed(
    malformed: MalformedLines,
    rows: int,
    source: str,
    max_share: float = DEFAULT_MAX_MALFORMED_SHARE,
    flag: str | None = "--max-malformed-share",
) -> None:
    """Stop on too many malformed lines, else log each (up to LOGGED_LINES) as a WARNING.

    Args:
        malformed: the file's malformed lines.
        rows: the file's non-blank lines (malformed ones included).
        source: file name used in the error.
        max_share: largest tolerated share of malformed lines among non-blank lines.
        flag: the CLI flag that sets max_share, named in the error (None = none).

    Raises:
        LabelError: more than max_share of the lines (or every line) are malformed: probably
            not an AVA.txt, so the run stops (one line naming the count and first line numbers).
    """
    count, problems = malformed.count, malformed.problems
    if not count:
        return
    if count > max_share * rows or count == rows:
        first = ", ".join(str(line) for line in malformed.lines[:FIRST_LINES])
        limit = f"{flag} {max_share:g}" if flag else f"the tolerated share {max_share:g}"
        raise LabelError(
            f"{source}: {count} of {rows} lines are malformed (over {limit}; "
            f"is it an AVA.txt?), first at line(s) {first}; {problems[0]}"
        )
    for problem in problems[:LOGGED_LINES]:
        LOGGER.warning("malformed line dropped: %s", problem)
    if count > LOGGED_LINES:
        LOGGER.warning(
            "%s: %d malformed lines dropped in all (%d more not shown)",
            source,
            count,
            count - LOGGED_LINES,
        )
