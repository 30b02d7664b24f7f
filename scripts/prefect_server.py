"""`prefect server start`, with the Host header checked: started by scripts/serve.sh (make serve).

Why: Prefect 3 has CORS and CSRF settings but no setting for allowed hosts, so its API answers any
``Host``. A web page on a rebinding domain (evil.example, resolved to 127.0.0.1 after the page loaded) is
then same-origin with the API as far as the browser is concerned, and CORS/CSRF no longer stand in its
way. This runs the very app `prefect server start` runs (``create_app(final=True)``: API, UI and the
background services, one uvicorn worker) behind Starlette's ``TrustedHostMiddleware``, which answers 400
to any request whose Host name is not in ``PPO_ALLOWED_HOSTS`` (comma-separated names; serve.sh passes
127.0.0.1, localhost and the address it binds). Every other setting comes from the environment as for
`prefect server start` (PREFECT_HOME, PREFECT_SERVER_*, including the API auth string).
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    args = parser.parse_args()
    allowed = [h.strip() for h in os.environ.get("PPO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")]
    allowed = [h for h in allowed if h]
    if not allowed or "*" in allowed:
        # an empty or wildcard list would silently turn the check off: refuse to start instead
        raise SystemExit("error: PPO_ALLOWED_HOSTS must name the hosts clients use (no '*')")

    import importlib.metadata
    from pathlib import Path

    from ppo import store_templates

    # a new database starts as a copy of the installed Prefect's empty one when an earlier start kept one
    # (ppo.store_templates): Prefect then skips its ~10 s of migrations and block registration
    db = store_templates.prefect_database(Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser())
    if db is not None:
        store_templates.copy_template("prefect", importlib.metadata.version("prefect"), db)

    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import get_current_settings
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    settings = get_current_settings().server
    app = TrustedHostMiddleware(create_app(final=True), allowed_hosts=allowed)
    print(f"prefect server on http://{args.host}:{args.port} (allowed Host names: {', '.join(allowed)})")
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        timeout_keep_alive=settings.api.keepalive_timeout,
        log_level=settings.logging_level.lower(),
    )


if __name__ == "__main__":
    main()
