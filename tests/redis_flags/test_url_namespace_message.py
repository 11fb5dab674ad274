"""``?namespace=`` in the URL given to ``RedisFlagStore`` or ``RedisRegistry``: the
error says where the namespace goes.

Before the fix, ``RedisFlagStore("redis://host/0?namespace=shop")`` (the form
a ``--store`` URL takes) was refused with "only a flag store URL takes
?namespace=; give the registry's namespace on its own": it was a flag store,
and no registry was involved. The URL is checked before any I/O, so no
server is needed.
"""

from __future__ import annotations

import pytest

from foundation import RedisFlagStore, RedisRegistry
from foundation.errors import InvalidConfig
from tests.redis_support import free_port


@pytest.mark.parametrize("cls", [RedisFlagStore, RedisRegistry])
def test_a_namespace_in_the_url_names_the_namespace_argument(cls: type) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?namespace=shop"
    with pytest.raises(InvalidConfig) as caught:
        cls(url)
    message = str(caught.value)
    assert "'namespace': a Redis connection has no namespace" in message, message
    assert "namespace=NS to RedisRegistry or RedisFlagStore" in message, message
    assert "registry's namespace" not in message, message
