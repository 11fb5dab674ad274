"""The admin web page and its JSON API (extra ``admin``: Starlette, uvicorn, prometheus-client).

Without any of the three, importing this package raises ``ImportError`` naming
``foundation[admin]``.

``create_app(flags=, migration=, registry=, supervisors=, token=, read_only=)``
returns an ASGI app over live objects, to mount in an application (``Mount("/admin",
app)``); ``serve(..., bind="127.0.0.1:8800")`` runs it under uvicorn in the
foreground and ``AdminServer(...)`` on a background thread. The app also
serves OFREP (``POST /ofrep/v1/evaluate/flags[/{key}]``, see
``foundation.admin._ofrep``) and shows and changes typed flags (``assign``,
``split``). ``create_app`` reads the migration plans recorded in the flags'
store for OFREP's metadata: on a Redis that does not answer that waits
up to the store's ``timeout``, and a store it cannot read logs a WARNING (the
app starts all the same). The plans are read again, off the request path
(at most once a second), after the flags change and each time a Redis store
is back in sync after an outage: a plan recorded later (by any process on the
store, with any store) shows once its migration steps, a plan unread at
start once Redis is back, without a restart.

During a backend outage the service degrades without stopping, and the app
says so: ``GET /api/status`` (per component its state, since when, the last
error; ``degraded`` overall), ``"sync"`` in every flag write's answer
(``"pending"`` for a kill switch not yet committed), gauges on ``/metrics``
and a banner on the page (``foundation.admin._status``). ``/healthz`` stays a
liveness probe: it never fails on an outage, which restarting would not cure.

Security model:

- ``token``: ``"secret"`` (operator ``admin``), ``"name:secret"``, a list of
  those, or ``{name: secret}``. Requests authenticate with ``Authorization:
  Bearer <secret>``; the operator's name is the ``by`` of every write (a body
  may not send ``by``).
- Every write needs a token; without any configured the server is read-only.
  ``read_only=True`` refuses every write (403). Reads are open only when
  ``public_reads`` (``serve`` sets it on a loopback bind); off loopback
  ``serve`` refuses to start without a token. Without a token configured, an
  ``Authorization`` header is ignored (nothing to check it against): the
  answer is the one without it, and ``whoami`` says ``token_configured: false``.
- Write bodies: a field the route does not take is a 422 ``InvalidBody``
  naming it; an empty body is ``{}``.
- CSRF: no cookies. A browser never attaches an ``Authorization`` header by
  itself, and writes must be ``Content-Type: application/json`` (a cross-site
  form cannot send that without a CORS preflight, which is never granted).
- Disabling a flag needs ``"confirm": <flag name>``; an emergency rollback
  ``"confirm": <current stage number or name>`` (the number as a JSON integer
  or a string, never a boolean or ``1.0``; the page makes the operator type it).
- The page runs under a strict Content-Security-Policy, refuses framing and
  builds every element with ``textContent``.

Example:
    >>> from foundation.flags import FeatureFlags, Flag
    >>> flags = FeatureFlags([Flag("beta")])
    >>> app = create_app(flags=flags, token="ana:s3cret")
    >>> app.state.admin.operators.operator("s3cret")
    'ana'
    >>> app.state.admin.close(); flags.close()
"""

from __future__ import annotations

try:  # the admin extra, checked whole here: not at the first request (/metrics a 500)
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        f"foundation.admin needs the admin extra (Starlette, uvicorn, prometheus-client; "
        f"{exc.name or exc} is missing): pip install 'foundation[admin]'"
    ) from exc

from foundation._public import fixup_module_paths
from foundation.admin._app import create_app
from foundation.admin._auth import parse_tokens
from foundation.admin._server import AdminServer, serve
from foundation.admin._state import AdminState

__all__ = ["AdminServer", "AdminState", "create_app", "parse_tokens", "serve"]

fixup_module_paths(globals(), __name__)
