"""A tiny HTML builder where every value is escaped by construction (pure).

``h("p", {"class": "note"}, "a < b", h("b", None, name))`` escapes the text
and every attribute value; only ``Html`` values (what ``h`` returns) pass
through as markup. There is no way to interpolate a string into markup
without escaping it, which is the property a template engine would be
brought in for, in forty lines and no dependency.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
VOID = frozenset({"br", "hr", "img", "input", "link", "meta"})


class Html(str):
    """Markup that is already safe: built by :func:`h` (or a literal in this package)."""

    __slots__ = ()


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def _children(items: Iterable[object]) -> Iterable[str]:
    for item in items:
        if item is None or item is False:
            continue
        if isinstance(item, Html):
            yield item
        elif isinstance(item, str | int | float):
            yield escape(item)
        elif isinstance(item, Iterable):
            yield from _children(item)
        else:
            raise TypeError(f"cannot render {type(item).__name__}")


def h(tag: str, attrs: Mapping[str, object] | None = None, *children: object) -> Html:
    if not _NAME.match(tag):
        raise ValueError(f"bad tag {tag!r}")
    parts = [f"<{tag}"]
    for name, value in (attrs or {}).items():
        if not _NAME.match(name):
            raise ValueError(f"bad attribute {name!r}")
        if value is None or value is False:
            continue
        parts.append(f" {name}" if value is True else f' {name}="{escape(value)}"')
    parts.append(">")
    if tag in VOID:
        if children:
            raise ValueError(f"<{tag}> has no content")
        return Html("".join(parts))
    parts.extend(_children(children))
    parts.append(f"</{tag}>")
    return Html("".join(parts))


def fragment(*children: object) -> Html:
    return Html("".join(_children(children)))
