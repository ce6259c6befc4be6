"""How a py-spy profile's samples split between the layers of the hot path: SQLAlchemy, the
driver, the event loop, wanotify, the rest.

    py-spy record -r 500 -f raw -o e2e.txt -- \\
        python bench/pipeline.py --no-sqlite --notifications 20000 --producers 64
    python bench/profile_share.py e2e.txt

Why: a change that takes a layer off the hot path can save at most the samples that layer
spends itself, and this says how many that is before the change is written. Each sample is
counted once, for the layer of its innermost frame ("self"), and once for every layer on its
stack ("anywhere on the stack"). py-spy shows no frames of C or Cython code without
``--native``: time in uvloop's loop, asyncpg's protocol and their system calls shows as the
Python frame that called into them, mostly ``asyncio/runners.py`` (the loop's ``run``), here
"event loop".
"""

from __future__ import annotations

import argparse
import collections
import re
from collections.abc import Iterable
from pathlib import Path

#: a layer and the package directories that mark its frames (py-spy names a frame's file by
#: its path from the package directory on: ``sqlalchemy/orm/session.py``)
LAYERS = (
    ("SQLAlchemy", {"sqlalchemy"}),
    ("asyncpg", {"asyncpg"}),
    ("event loop (uvloop, asyncio)", {"asyncio", "uvloop"}),
    ("wanotify", {"wanotify"}),
    ("jinja2", {"jinja2"}),
    ("the bench", {"bench"}),
)
FRAME_FILE = re.compile(r"\(([^():]+)(?::\d+)?\)$")


def layer(frame: str) -> str:
    match = FRAME_FILE.search(frame)
    path = match.group(1) if match else frame
    directories = set(path.split("/")[:-1])
    for name, marks in LAYERS:
        if directories & marks:
            return name
    return "other"


def shares(lines: Iterable[str]) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Samples in all, by the innermost frame's layer, and by every layer on the stack."""
    total = 0
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[layer(frames[-1])] += n
        for name in {layer(f) for f in frames}:
            anywhere[name] += n
    return total, own, anywhere


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy record -f raw output")
    args = parser.parse_args()
    with args.profile.open() as lines:
        total, own, anywhere = shares(lines)
    if not total:
        raise SystemExit(f"{args.profile}: no samples")
    print(f"\n{total:,} samples\n")
    print("| layer | self | anywhere on the stack |")
    print("|---|---|---|")
    for name, n in own.most_common():
        print(f"| {name} | {n / total:.1%} | {anywhere[name] / total:.1%} |")


if __name__ == "__main__":
    main()
