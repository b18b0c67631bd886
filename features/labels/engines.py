"""AVA label engines: pandas for small local files, dask for remote or larger-than-budget ones."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from features import files
from features.labels.parsing import parse_ava_text, score_ava
from schemas.errors import ConfigError

LOGGER = logging.getLogger(__name__)
AUTO = "auto"
DEFAULT_MEMORY_BUDGET = 1 << 30
DEFAULT_BLOCKSIZE = 16 << 20

# (url, source name for errors, blocksize) -> scored rows of the whole file, in file order.
AvaEngine = Callable[[str, str, int], pd.DataFrame]


@dataclass(frozen=True)
class EngineOptions:
    """How the AVA label file is read.

    Attributes:
        engine: 'auto', 'pandas' or 'dask'; auto = dask for remote or larger-than-budget input.
        memory_budget: input size in bytes above which auto picks dask.
        blocksize: bytes of AVA.txt per dask partition (cut at line ends).
    """

    engine: str = AUTO
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    blocksize: int = DEFAULT_BLOCKSIZE


def read_ava_pandas(url: str, source: str, blocksize: int = DEFAULT_BLOCKSIZE) -> pd.DataFrame:
    """Scored AVA rows read whole into memory with pandas (blocksize is unused).

    Malformed lines are rows with a `problem` message (see parse_ava_text).
    """
    return score_ava(parse_ava_text(_decode(files.read_bytes(url)), source))


def _decode(data: bytes) -> str:
    """UTF-8 text; bytes that are not UTF-8 are kept as escapes and make their line malformed."""
    return data.decode("utf-8", errors="surrogateescape")


def _line_count(block: bytes) -> int:
    return len(_decode(block).splitlines())


def _parse_block(block: bytes, source: str, first_line: int) -> pd.DataFrame:
    return parse_ava_text(_decode(block), source, first_line)


def read_ava_dask(url: str, source: str, blocksize: int = DEFAULT_BLOCKSIZE) -> pd.DataFrame:
    """Scored AVA rows parsed and scored per partition with a dask dataframe.

    A first pass counts the lines of each block (blocks end at a newline), so every partition
    knows the number of its first line and malformed lines name the same line as with pandas.

    Args:
        url: local path or fsspec URL of AVA.txt.
        source: file name used in error messages.
        blocksize: bytes per partition.

    Returns:
        The same frame as read_ava_pandas (index 0..n-1).
    """
    import dask
    import dask.dataframe as dd
    from dask.bytes import read_bytes

    _, per_file = read_bytes(url, delimiter=b"\n", blocksize=blocksize, sample=False)
    blocks = [block for file_blocks in per_file for block in file_blocks]
    if not blocks:  # an empty file
        return score_ava(parse_ava_text("", source))
    counts = dask.compute(*[dask.delayed(_line_count)(block) for block in blocks])
    starts = itertools.accumulate(counts, initial=1)
    parts = [
        dask.delayed(_parse_block)(block, source, start)
        for block, start in zip(blocks, starts, strict=False)
    ]
    raw = dd.from_delayed(parts, meta=parse_ava_text("", source), verify_meta=False)
    scored = raw.map_partitions(score_ava, meta=score_ava(parse_ava_text("", source)))
    LOGGER.debug("%s: %d dask partitions of <= %d bytes", source, len(parts), blocksize)
    return scored.compute().reset_index(drop=True)


LABEL_ENGINES: dict[str, AvaEngine] = {
    "pandas": read_ava_pandas,
    "dask": read_ava_dask,
}


def choose_engine(url: str, options: EngineOptions) -> str:
    """The engine for one input: the requested one; for 'auto', dask if remote or over budget.

    Args:
        url: local path or fsspec URL of the input.
        options: the requested engine and the memory budget.

    Returns:
        A key of LABEL_ENGINES.

    Raises:
        ConfigError: an unknown engine name.
    """
    if options.engine != AUTO:
        if options.engine not in LABEL_ENGINES:
            raise ConfigError(
                f"--engine: unknown engine {options.engine!r}; "
                f"use {AUTO} or one of {sorted(LABEL_ENGINES)}"
            )
        return options.engine
    if not files.is_local(url):
        return "dask"
    fs, inner = files.filesystem(url)
    return "dask" if fs.size(inner) > options.memory_budget else "pandas"
