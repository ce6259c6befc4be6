"""Summarise py-spy's collapsed stacks (``--format raw``): the functions of ours (and the
libraries) that the samples were in, inclusive, most first; or, with ``--layers``, how the
samples split between the layers of the hot path.

    python bench/stacks.py stacks.txt [--match wanotify] [--top 30]
    python bench/stacks.py stacks.txt --layers

``--layers``: each sample counts once for the layer of its innermost frame ("self") and once
for every layer on its stack ("anywhere on the stack"): SQLAlchemy, asyncpg, the event loop,
wanotify, jinja2, the rest. A change that takes a layer off the hot path saves at most that
layer's own samples, and this says how many that is before the change is written. py-spy shows
no frames of C or Cython code without ``--native``: the time in uvloop's loop, asyncpg's
protocol and their system calls shows as the Python frame that called into them, mostly the
loop's ``run`` (``asyncio/runners.py``), here "event loop".
"""

from __future__ import annotations

import argparse
import collections
import re
from collections.abc import Iterator
from pathlib import Path

#: a layer and the package directories that mark its frames (py-spy names a frame's file by
#: its path from the package directory on: ``sqlalchemy/orm/session.py``)
LAYERS = (
    ("SQLAlchemy", {"sqlalchemy"}),
    ("asyncpg", {"asyncpg"}),
    ("event loop (uvloop, asyncio)", {"asyncio", "uvloop"}),
    ("wanotify", {"wanotify"}),
    ("jinja2", {"jinja2"}),
)
FRAME_FILE = re.compile(r"\(([^():]+)(?::\d+)?\)$")


def samples(path: Path) -> Iterator[tuple[list[str], int]]:
    """Each stack (outermost frame first) and its count."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def layer(frame: str) -> str:
    match = FRAME_FILE.search(frame)
    directories = set((match.group(1) if match else "").split("/")[:-1])
    for name, marks in LAYERS:
        if directories & marks:
            return name
    return "the rest"


def by_layer(path: Path) -> None:
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, n in samples(path):
        total += n
        own[layer(frames[-1])] += n
        for name in {layer(f) for f in frames}:
            anywhere[name] += n
    print(f"{total} samples\n")
    print("| layer | self | anywhere on the stack |")
    print("|---|---|---|")
    for name, n in own.most_common():
        print(f"| {name} | {n / total:.1%} | {anywhere[name] / total:.1%} |")


def by_function(path: Path, match: str, top: int) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, n in samples(path):
        total += n
        for frame in set(frames):
            if match in frame:
                inclusive[frame] += n
        own[frames[-1]] += n
    print(f"{total} samples\n\ninclusive ({match}):")
    for frame, n in inclusive.most_common(top):
        print(f"{100 * n / total:5.1f}%  {frame}")
    print("\nself (any):")
    for frame, n in own.most_common(top):
        print(f"{100 * n / total:5.1f}%  {frame}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--match", default="wanotify")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--layers", action="store_true", help="the split by layer instead")
    args = parser.parse_args()
    if args.layers:
        by_layer(args.file)
    else:
        by_function(args.file, args.match, args.top)
