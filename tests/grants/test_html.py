"""The page's HTML builder escapes every value by construction (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.grants.html import Html, fragment, h


def test_text_and_attribute_values_are_escaped() -> None:
    built = h("a", {"href": '/x?a=1&b="2"', "title": "<t>"}, "<script>alert(1)</script>")
    assert built == (
        '<a href="/x?a=1&amp;b=&quot;2&quot;" title="&lt;t&gt;">'
        "&lt;script&gt;alert(1)&lt;/script&gt;</a>"
    )


def test_only_built_markup_passes_through() -> None:
    inner = h("b", None, "bold")
    assert h("p", None, inner, " & ", "<i>") == "<p><b>bold</b> &amp; &lt;i&gt;</p>"
    assert isinstance(fragment(inner, "x"), Html)


def test_flags_void_elements_and_skipped_values() -> None:
    assert h("input", {"required": True, "disabled": False, "value": None}) == "<input required>"
    assert (
        h("ul", None, [h("li", None, n) for n in (1, 2)], None) == "<ul><li>1</li><li>2</li></ul>"
    )
    with pytest.raises(ValueError, match="no content"):
        h("br", None, "x")


@pytest.mark.parametrize("name", ["onclick=alert(1) x", "a b", "", "A"])
def test_tag_and_attribute_names_are_never_taken_from_data(name: str) -> None:
    with pytest.raises(ValueError, match="bad"):
        h(name)
    with pytest.raises(ValueError, match="bad"):
        h("p", {name: "v"})


@given(st.text())
def test_no_text_ever_becomes_markup(text: str) -> None:
    built = h("p", {"title": text}, text)
    body = built[built.index(">") + 1 : -len("</p>")]
    assert "<" not in body and ">" not in body
    assert '"' not in built[len('<p title="') : built.index('">')]
