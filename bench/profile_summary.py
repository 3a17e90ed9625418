"""Top functions from a py-spy ``raw`` (collapsed stacks) profile, as text for the report."""

from __future__ import annotations

import re
from collections import Counter

# "func (path/to/file.py:123)" -> "func (file.py)": lines split one function into many rows.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_key(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    parts = path.replace("\\", "/").split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{m.group('func')} ({short})"


def summarize(collapsed: str, top: int = 15) -> list[str]:
    """Self and inclusive sample shares per function, highest self time first."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
    if total == 0:
        return ["no samples"]
    rows = [f"{total:,} samples; self% / total% per function (top {top} by self time)"]
    for name, n in own.most_common(top):
        rows.append(f"{100 * n / total:5.1f}% {100 * inclusive[name] / total:5.1f}%  {name}")
    return rows
