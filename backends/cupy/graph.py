"""CUDA graphs: record a callable's device work once, then replay all of it with one launch.

The recording runs on a stream of its own, with every allocation taken from a memory pool of its own that lives
as long as the graph: the arrays the callable leaves behind (gradients, saved activations, outputs) keep the
addresses the graph writes to, and memory it freed while recording is never handed to anyone else, so a replay
cannot overwrite an array allocated after the recording.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable


class Graph:
    """A recorded CUDA graph; calling it replays the recording on the current stream."""

    def __init__(self, graph, pool, stream) -> None:
        self._graph = graph
        self._keep = (pool, stream)  # the pool holds the graph's memory: it lives as long as the graph

    def __call__(self) -> None:
        self._graph.launch()  # on the current stream


def capture(fn: Callable[[], None]) -> Graph:
    """Record ``fn``'s device work as a :class:`Graph` (nothing runs now); an error in ``fn``, or work that
    cannot be recorded (a host synchronisation, say), ends the recording and raises."""
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    pool = cupy.cuda.MemoryPool()
    with cupy.cuda.using_allocator(pool.malloc), stream:
        stream.begin_capture()
        try:
            fn()
        except BaseException:
            with contextlib.suppress(Exception):  # the recording is void; the caller needs fn's error
                stream.end_capture()
            raise
        return Graph(stream.end_capture(), pool, stream)
