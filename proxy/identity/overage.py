"""Claims an issuer left out of a token and pointed elsewhere (pure).

OpenID Connect distributed and aggregated claims (Core 5.6.2) name, under
``_claim_names``, claims whose values live at another endpoint. Entra ID
uses exactly that when a user is in more groups than fit a token (about
200): the ``groups`` claim is missing and ``_claim_names`` says
``{"groups": "src1"}``; implicit-flow tokens say ``hasgroups: true`` instead.
A claim missing for that reason is *unknown*, not absent: a deny rule on
``groups: [contractors]`` must not pass a contractor whose groups were cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# The name a caller's group membership goes by in ``Identity.unknown_claims``:
# the ``groups`` criterion reads ``Identity.groups``, built from the issuer's
# configured group claim paths, so any of them being unknown makes it unknown.
GROUPS = "groups"


def overage_claims(claims: Mapping[str, Any], group_paths: Iterable[str] = ()) -> frozenset[str]:
    """Names of claims the token points elsewhere for instead of carrying them.

    Adds :data:`GROUPS` when one of ``group_paths`` (dotted claim paths, as in
    ``identity.issuers[].claims.groups``) starts with such a claim.
    """
    unknown: set[str] = set()
    names = claims.get("_claim_names")
    if isinstance(names, Mapping):
        unknown.update(n for n in names if isinstance(n, str) and n and n not in claims)
    if claims.get("hasgroups") is True and GROUPS not in claims:
        unknown.add(GROUPS)
    if unknown and any(path.split(".", 1)[0] in unknown for path in group_paths):
        unknown.add(GROUPS)
    return frozenset(unknown)
