"""``help(FeatureFlags)`` never prints the process environment (issue 11, item 9)."""

from __future__ import annotations

import inspect
import os
import pydoc

import pytest

from foundation import FeatureFlags, Flag

SECRET = "s3cr3t-token-that-must-not-leak"


def test_the_signature_holds_a_sentinel_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOUNDATION_TEST_SECRET", SECRET)
    default = inspect.signature(FeatureFlags.load_from_config).parameters["env"].default
    assert default is not os.environ
    assert SECRET not in repr(default)
    assert repr(default) == "<the process environment>"


def test_help_of_feature_flags_does_not_print_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOUNDATION_TEST_SECRET", SECRET)
    text = pydoc.render_doc(FeatureFlags, renderer=pydoc.plaintext)
    assert "load_from_config" in text  # the method is documented ...
    assert SECRET not in text  # ... without the environment's values
    assert "FOUNDATION_TEST_SECRET" not in text


def test_the_default_still_reads_the_environment_at_call_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FeatureFlags([Flag("beta")]) as flags:
        monkeypatch.setenv("FOUNDATION_FLAG_BETA", "on")  # set after construction
        flags.load_from_config()
        assert flags.enabled("beta") is True
        monkeypatch.setenv("FOUNDATION_FLAG_BETA", "off")
        flags.load_from_config()
        assert flags.enabled("beta") is False
        flags.load_from_config(env=None)  # None ignores the environment
        assert flags.enabled("beta") is False  # the declared default
