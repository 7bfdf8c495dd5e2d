"""The CI guard: every way CI services say "this is CI" makes missing parts fail instead of skip."""

from __future__ import annotations

import re

import pytest

from .ci import unavailable, under_ci


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", "yes", "Yes", " true "])
def test_a_truthy_ci_fails_a_test_whose_part_is_missing(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert under_ci()
    with pytest.raises(pytest.fail.Exception, match=re.escape("no engine here (CI: this must run, not skip)")):
        unavailable("no engine here")


@pytest.mark.parametrize("value", [None, "", "0", "false", "no"])
def test_without_ci_a_missing_part_skips_the_test(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not under_ci()
    with pytest.raises(pytest.skip.Exception, match="no engine here"):
        unavailable("no engine here")
