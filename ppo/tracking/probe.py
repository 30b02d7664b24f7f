"""Reachability probe for the HTTP services the project talks to (MLflow, Prefect): bounded retries,
then one readable error instead of a client library's traceback minutes later."""

from __future__ import annotations

import time
import urllib.error
import urllib.request


class ServiceUnavailableError(RuntimeError):
    """A server the run depends on cannot be reached."""


def probe(
    url: str, what: str, hint: str, attempts: int = 3, delay_s: float = 1.0, timeout_s: float = 3.0
) -> None:
    """GET ``url`` up to ``attempts`` times (linear back-off); raise :class:`ServiceUnavailableError` if it
    never answers."""
    last: Exception | None = None
    start = time.monotonic()
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                if r.status < 500:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = e
        if attempt + 1 < attempts:
            time.sleep(delay_s * (attempt + 1))
    raise ServiceUnavailableError(
        f"{what} is unreachable after {attempts} attempts ({time.monotonic() - start:.1f} s): "
        f"{getattr(last, 'reason', last)}. {hint}"
    )
