"""An admin app served by a real uvicorn on a thread, on a free loopback port
(for tests that need ``create_app``'s options, which ``AdminServer`` sets for them)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from foundation.admin._server import _bind


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL (ends with ``/``).
    The app's admin state is closed with the server."""
    sock = _bind("127.0.0.1", 0)
    started = threading.Event()

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            started.set()

    server = Server(
        uvicorn.Config(app, lifespan="off", ws="none", log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert started.wait(30), "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        app.state.admin.close()
        server.should_exit = True
        thread.join(20)
        sock.close()
