"""Every kind of denial has one answer, and a client can read the kind back."""

from __future__ import annotations

import pytest

from podshell.cli.portforward import _lasting
from podshell.core.denial import DenialKind, answer, kind_of_status


@pytest.mark.parametrize("kind", list(DenialKind), ids=lambda k: k.value)
def test_every_kind_answers_and_reads_back(kind):
    said = answer(kind)
    assert 400 <= said.status < 600 and said.reason
    assert kind_of_status(said.status) is kind


def test_the_answers():
    assert {kind: (answer(kind).status, answer(kind).reason) for kind in DenialKind} == {
        DenialKind.FORBIDDEN: (403, "Forbidden"),
        DenialKind.NOT_FOUND: (404, "NotFound"),
        DenialKind.INVALID: (400, "BadRequest"),
        DenialKind.UNAVAILABLE: (503, "ServiceUnavailable"),
        DenialKind.TOO_MANY: (429, "TooManyRequests"),
    }


def test_other_statuses_are_no_denial():
    assert kind_of_status(200) is None and kind_of_status(500) is None


@pytest.mark.parametrize(
    "status, lasting", [(401, True), (403, True), (404, True), (400, True), (503, False), (500, False), (502, False)]
)
def test_port_forward_reconnects_only_past_passing_refusals(status, lasting):
    assert _lasting(status) is lasting
