"""The acceptor's presentation contexts: cheap per-association copies that behave like deep ones."""

from __future__ import annotations

import copy

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext

from hippo_scp.network.presentation import (
    ACCEPTED_TRANSFER_SYNTAXES,
    CheaplyCopiedContext,
    per_association_contexts,
    supported_contexts,
)


def test_per_association_contexts_are_the_supported_ones() -> None:
    plain = supported_contexts()
    cheap = per_association_contexts(plain)
    assert [vars(c) for c in cheap] == [vars(p) for p in plain]
    assert all(isinstance(c, CheaplyCopiedContext) for c in cheap)
    assert cheap[1].transfer_syntax == ACCEPTED_TRANSFER_SYNTAXES


def test_a_copy_is_independent_of_the_original_like_a_deep_copy() -> None:
    """pynetdicom copies the server's contexts per association and negotiates on the copy:
    nothing an association sets may leak into the next one."""
    (original,) = per_association_contexts(supported_contexts()[1:2])
    snapshot = copy.deepcopy(vars(original))
    negotiated = copy.deepcopy(original)
    negotiated.context_id = 7
    negotiated.result = 0
    negotiated.transfer_syntax = [ExplicitVRLittleEndian]
    negotiated._as_scp = True
    assert vars(original) == snapshot
    assert type(negotiated) is CheaplyCopiedContext


def test_unknown_attribute_values_fall_back_to_a_real_deep_copy() -> None:
    """A future pynetdicom may add a mutable attribute of another kind: still copied deeply."""
    (context,) = per_association_contexts([PresentationContext()])
    context.extra = {"roles": [1, 2]}
    copied = copy.deepcopy(context)
    copied.extra["roles"].append(3)
    assert context.extra == {"roles": [1, 2]}
