"""Summarise py-spy's collapsed stacks (``--format raw``): the functions of ours (and the
libraries) that the samples were in, inclusive, most first.

    python bench/stacks.py stacks.txt [--match wanotify] [--top 30]
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def main(args: argparse.Namespace) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(args.file).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            if args.match in frame:
                inclusive[frame] += n
        own[frames[-1]] += n
    print(f"{total} samples\n\ninclusive ({args.match}):")
    for frame, n in inclusive.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {frame}")
    print("\nself (any):")
    for frame, n in own.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {frame}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--match", default="wanotify")
    parser.add_argument("--top", type=int, default=30)
    main(parser.parse_args())
