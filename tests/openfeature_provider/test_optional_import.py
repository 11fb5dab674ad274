"""The ``openfeature`` extra stays optional: ``import foundation`` never imports the SDK,
and ``foundation.openfeature`` without it names the extra to install."""

from __future__ import annotations

from tests.faults._subprocess import run_scenario


def test_import_foundation_does_not_import_the_sdk() -> None:
    run_scenario(
        """
        import foundation, foundation.flags
        assert "openfeature" not in sys.modules, [m for m in sys.modules if "openfeature" in m]
        assert "foundation.openfeature" not in sys.modules
        print("OK")
        """
    )


def test_without_the_sdk_the_error_names_the_extra() -> None:
    run_scenario(
        """
        sys.modules["openfeature"] = None  # as if openfeature-sdk were not installed
        try:
            import foundation.openfeature
        except ImportError as exc:
            assert "foundation[openfeature]" in str(exc), exc
            print("OK")
        """
    )
