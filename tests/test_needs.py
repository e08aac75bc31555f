"""``needs``: what is missing skips a test on a developer's machine and fails it under CI."""

from __future__ import annotations

import pytest

import needs


@pytest.mark.parametrize("value,ci", [("", False), ("0", False), ("false", False), ("1", True), ("true", True)])
def test_missing_fails_only_under_ci(monkeypatch, value, ci) -> None:
    monkeypatch.setenv("CI", value)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="no_such_module_for_needs is not importable"):
        needs.extra("no_such_module_for_needs")


def test_extra_returns_the_module(monkeypatch) -> None:
    monkeypatch.setenv("CI", "1")
    assert needs.extra("json").dumps([1]) == "[1]"
