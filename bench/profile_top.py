"""Summarize py-spy raw (collapsed) stacks: self time and inclusive time per function.

Usage: python -m bench.profile_top FILE.txt [N]
"""

from __future__ import annotations

import sys
from collections import Counter


def main() -> None:
    """Print the top functions of a collapsed-stack profile."""
    path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            own[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    print(f"{total} samples\n-- self --")
    for frame, n in own.most_common(top):
        print(f"{n / total:6.1%}  {frame}")
    print("-- inclusive --")
    for frame, n in inclusive.most_common(top):
        print(f"{n / total:6.1%}  {frame}")


if __name__ == "__main__":
    main()
