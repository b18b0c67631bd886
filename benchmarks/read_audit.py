"""Read audits for benchmarks: files opened under a folder, requests a memory:// store serves."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def count_opens(root: str, operation: Callable[[], Any]) -> int:
    """Files opened under root while operation runs (audit hook on every Python open)."""
    opened: list[str] = []
    active = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if active[0] and event == "open" and isinstance(args[0], str) and args[0].startswith(root):
            opened.append(args[0])

    sys.addaudithook(hook)
    operation()
    active[0] = False  # audit hooks cannot be removed
    return len(opened)


class RequestCounter:
    """Counts what an object store would bill: HEAD (info), LIST (ls) and GET (reads)."""

    def __init__(self) -> None:
        self.counts = {"HEAD": 0, "LIST": 0, "GET": 0}
        self._inside = 0

    def install(self) -> None:
        """Wrap fsspec's MemoryFileSystem (process-wide)."""
        from fsspec.implementations.memory import MemoryFileSystem

        def counted(kind: str, method: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if not self._inside:
                    self.counts[kind] += 1
                self._inside += 1
                try:
                    return method(*args, **kwargs)
                finally:
                    self._inside -= 1

            return wrapper

        fs_class: Any = MemoryFileSystem
        fs_class.info = counted("HEAD", MemoryFileSystem.info)
        fs_class.ls = counted("LIST", MemoryFileSystem.ls)
        fs_class.cat_file = counted("GET", MemoryFileSystem.cat_file)
        real_open = MemoryFileSystem._open

        def opened(fs: Any, path: str, mode: str = "rb", **kwargs: Any) -> Any:
            handle = real_open(fs, path, mode, **kwargs)
            if "r" in mode and not self._inside:
                read = handle.read

                def counted_read(*args: Any) -> Any:  # each read of an open object: a GET
                    self.counts["GET"] += 1
                    return read(*args)

                handle.read = counted_read
            return handle

        fs_class._open = opened

    def reset(self) -> dict[str, int]:
        """Counts so far, then zero."""
        counts, self.counts = dict(self.counts), {key: 0 for key in self.counts}
        return counts
