"""After ``flags.close()`` a read of the wrong type is ``PROVIDER_FATAL`` too.

Found by an explorer (3/3): the declared-kind check answered ``TYPE_MISMATCH``
before anything touched the closed ``flags``, so such a read emitted no
``PROVIDER_ERROR`` and the SDK kept the status ``READY``; docs/openfeature.md
promises ``PROVIDER_FATAL`` "whatever the key". Closed is now checked first on
that branch too.
"""

from __future__ import annotations

from typing import Any

import pytest
from openfeature.client import OpenFeatureClient
from openfeature.event import ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

from foundation.flags import FeatureFlags
from foundation.openfeature import FoundationProvider
from tests.openfeature_provider.conftest import Events

# (accessor, a flag declared of another kind, the caller's default)
WRONG_TYPE = [
    ("string", "beta", "x"),  # boolean flag
    ("integer", "color", 0),  # string flag
    ("boolean", "color", False),
    ("float", "layout", 0.5),  # object flag
    ("object", "limit", {}),  # integer flag
    ("integer", "beta", 1),  # a boolean flag is never a number
]


@pytest.mark.parametrize(("kind", "key", "default"), WRONG_TYPE)
def test_a_wrong_type_read_of_closed_flags_is_provider_fatal(
    client: OpenFeatureClient, flags: FeatureFlags, events: Events, kind: str, key: str,
    default: Any,
) -> None:  # fmt: skip
    client.add_handler(ProviderEvent.PROVIDER_ERROR, events.handler(ProviderEvent.PROVIDER_ERROR))
    # Open, the read is a type mismatch.
    d = getattr(client, f"get_{kind}_details")(key, default)
    assert (d.reason, d.error_code) == (Reason.ERROR, ErrorCode.TYPE_MISMATCH), d
    flags.close()
    d = getattr(client, f"get_{kind}_details")(key, default)
    assert (d.value, d.reason, d.error_code) == (default, Reason.ERROR, ErrorCode.PROVIDER_FATAL)
    event, details = events.next()  # emitted by that very read
    assert (event, details.error_code) == (ProviderEvent.PROVIDER_ERROR, ErrorCode.PROVIDER_FATAL)
    assert client.get_provider_status() == ProviderStatus.FATAL


@pytest.mark.parametrize(("kind", "key", "default"), WRONG_TYPE)
def test_a_direct_wrong_type_resolution_of_closed_flags_is_provider_fatal(
    provider: FoundationProvider, flags: FeatureFlags, kind: str, key: str, default: Any
) -> None:
    flags.close()
    r = getattr(provider, f"resolve_{kind}_details")(key, default)
    assert (r.value, r.reason, r.error_code) == (default, Reason.ERROR, ErrorCode.PROVIDER_FATAL)
    assert r.error_message == "this FeatureFlags is closed"
