"""What a long-running process (``serve``, ``worker``, ``demo``) sets up once: the asyncio event
loop it runs on, and its garbage collector's view of the objects made at start-up.

uvloop (libuv underneath) runs the same asyncio code with less overhead per callback and per
socket read. The service awaits the database many times per notification and per request, so
the loop's own cost is a visible share of its CPU. uvicorn picks uvloop only when uvicorn
creates the loop itself (``uvicorn.run``); ``serve`` runs uvicorn's server inside a loop of its
own making (it binds the port first and shares the CLI's error handling), so the choice is made
here. uvloop comes with ``uvicorn[standard]`` on Linux and macOS; elsewhere ``auto`` falls back
to asyncio's own loop.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from wanotify import metrics
from wanotify.settings import EventLoopName

T = TypeVar("T")


class LoopUnavailable(RuntimeError):
    """The loop asked for by name is not installed."""


def loop_factory(name: EventLoopName) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``asyncio.Runner``; ``None`` means asyncio's default loop."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise LoopUnavailable(
                "WANOTIFY_EVENT_LOOP=uvloop but uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, T], name: EventLoopName = "auto") -> T:
    """``asyncio.run`` on the chosen loop."""
    try:
        factory = loop_factory(name)
    except LoopUnavailable:
        coro.close()  # never started: no "never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: which loop this code runs on (for the start-up line)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.split(".", 1)[0] == "uvloop" else "asyncio"


#: Young collections wait for this many more container objects made than freed (Python's
#: default is 700). A request or a send makes a few hundred objects before it frees them, so
#: at 700 young collections ran 45 to 135 times a second at 1,000 requests/s, walking and
#: promoting what was in flight; at 10,000, two or three times in 10 s (``bench/api.py``
#: prints them).
YOUNG_GENERATION_THRESHOLD = 10_000


def after_startup() -> None:
    """Once the process has started: take what exists then (modules, mappers, schemas, routes,
    the app) out of the cyclic garbage collector's reach, and time its pauses from now on
    (``wanotify_gc_pause_seconds`` on ``/metrics``).

    Under load many short-lived objects are still alive when a young collection runs, so they
    are promoted and soon make a full collection due; a full collection walks every object in
    the heap. With the start-up heap in it, each took about 100 ms on the benchmark machine,
    about 12 times in 10 s at 1,000 requests/s: every request in flight waited for it; frozen,
    4 to 6 ms. Frozen objects are still freed by reference counting; only the cycles among them
    are never looked for, and start-up objects live as long as the process anyway. The
    collection comes first, so no garbage is frozen. Young collections then wait for more
    objects (``YOUNG_GENERATION_THRESHOLD``)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, older, oldest)
    metrics.watch_gc()
