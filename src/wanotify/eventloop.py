"""The asyncio event loop that the long-running commands (``serve``, ``worker``, ``demo``) run on.

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
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from wanotify.settings import EventLoopName

T = TypeVar("T")


def loop_factory(name: EventLoopName) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``asyncio.Runner``; ``None`` means asyncio's default loop."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise RuntimeError(
                "WANOTIFY_EVENT_LOOP=uvloop but uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, T], name: EventLoopName = "auto") -> T:
    """``asyncio.run`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(coro)


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: which loop this code runs on (for the start-up line)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.split(".", 1)[0] == "uvloop" else "asyncio"
