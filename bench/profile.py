"""Reading py-spy's raw (collapsed-stack) output: the hottest frames of a profile."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


# The process's entry points sit on every stack; ranking them by total time says nothing.
_ENTRY = ("router/cli.py", "router/commands/", "router/__main__.py")


def _project(frame: str) -> bool:
    return ("(router/" in frame or "(subscriptions/" in frame) and not any(
        e in frame for e in _ENTRY
    )


def top_frames(raw: Path, n: int = 10) -> dict[str, object]:
    """The `n` frames with the most samples on top of the stack (self, any code), and the `n`
    project functions (router/, subscriptions/) with the most samples anywhere in the stack
    (total), as (frame, share of samples) pairs."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        weight = int(count)
        frames = [_name(f) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        samples += weight
        own[frames[-1]] += weight
        for frame in set(frames):
            if _project(frame):
                total[frame] += weight
    share = (lambda c: round(c / samples, 4)) if samples else (lambda c: 0.0)
    return {
        "samples": samples,
        "self": [(f, share(c)) for f, c in own.most_common(n)],
        "total": [(f, share(c)) for f, c in total.most_common(n)],
    }
