"""AVA label engines: pandas (in process) for small local files, dask for remote or larger ones.

Both read AVA.txt in blocks of whole lines and yield each block's compact rows in file order,
so memory holds a few blocks at a time, never the whole file or one frame of it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from features import files
from features.labels.ava_blocks import (
    DEFAULT_BLOCKSIZE,
    ParsedBlock,
    line_count,
    parse_block,
    read_blocks,
)
from schemas.errors import ConfigError

LOGGER = logging.getLogger(__name__)
AUTO = "auto"
DEFAULT_MEMORY_BUDGET = 1 << 30

# (url, source name for errors, blocksize) -> the file's blocks of compact rows, in file order.
AvaEngine = Callable[[str, str, int], Iterator[ParsedBlock]]


@dataclass(frozen=True)
class EngineOptions:
    """How the AVA label file is read.

    Attributes:
        engine: 'auto', 'pandas' or 'dask'; auto = dask for remote or larger-than-budget input.
        memory_budget: input size in bytes above which auto picks dask.
        blocksize: bytes of AVA.txt parsed at a time (a dask partition; cut at line ends).
    """

    engine: str = AUTO
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    blocksize: int = DEFAULT_BLOCKSIZE


def read_ava_pandas(
    url: str, source: str, blocksize: int = DEFAULT_BLOCKSIZE
) -> Iterator[ParsedBlock]:
    """AVA.txt read sequentially in this process, one block of lines at a time.

    Args:
        url: local path or fsspec URL of AVA.txt.
        source: file name used in the malformed lines' messages.
        blocksize: bytes read and parsed at a time.

    Returns:
        The blocks' compact rows, in file order (malformed lines named as in the whole file).
    """
    for block, first_line in read_blocks(url, blocksize):
        yield parse_block(block, source, first_line)


def read_ava_dask(
    url: str, source: str, blocksize: int = DEFAULT_BLOCKSIZE
) -> Iterator[ParsedBlock]:
    """AVA.txt parsed per partition by dask, a few partitions (one per worker) at a time.

    A first pass counts the lines of each block (blocks end at a newline), so every partition
    knows the number of its first line and malformed lines name the same line as with pandas.

    Args:
        url: local path or fsspec URL of AVA.txt.
        source: file name used in the malformed lines' messages.
        blocksize: bytes per partition.

    Returns:
        The same blocks' rows as read_ava_pandas gives (possibly cut elsewhere), in file order.
    """
    import dask
    from dask.bytes import read_bytes
    from dask.system import CPU_COUNT

    _, per_file = read_bytes(url, delimiter=b"\n", blocksize=blocksize, sample=False)
    blocks = [block for file_blocks in per_file for block in file_blocks]
    counts = dask.compute(*[dask.delayed(line_count)(block) for block in blocks])
    starts = itertools.accumulate(counts, initial=1)
    parts = [
        dask.delayed(parse_block)(block, source, start)
        for block, start in zip(blocks, starts, strict=False)
    ]
    window = max(1, int(dask.config.get("num_workers", None) or CPU_COUNT))
    LOGGER.debug("%s: %d dask partitions of <= %d bytes", source, len(parts), blocksize)
    for offset in range(0, len(parts), window):
        yield from dask.compute(*parts[offset : offset + window])


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
