"""MLflow store URIs, parsed by scheme and driver: pure string handling (no MLflow import), so the config's
validation can use it without loading MLflow."""

from __future__ import annotations

from ppo.config import excerpt

#: MLflow store URIs a config may name: servers and database servers (not files here), or local stores
REMOTE_STORE_SCHEMES = ("http", "https", "postgresql", "mysql", "mssql")


def local_store_path(uri: str) -> str | None:
    """The filesystem path of a local MLflow store URI, else ``None`` (a server or database server).

    Parsed by scheme and driver: ``sqlite:///p`` and ``sqlite+<driver>:///p`` (SQLAlchemy's forms),
    ``file:p`` / ``file:///p``, or a bare path. Any other scheme is refused (:class:`ValueError`), so a
    store URI cannot sneak a file outside ``$PPO_HOME`` past the check in an unexpected spelling.
    """
    scheme, sep, rest = uri.partition(":")
    if not sep or len(scheme) == 1:  # a bare path (or a Windows drive letter)
        return uri
    base = scheme.split("+", 1)[0].lower()
    if base == "sqlite":
        if not rest.startswith("///"):
            raise ValueError(f"{excerpt(uri)}: a sqlite store is sqlite:///<path>")
        return rest[3:].split("?")[0]
    if base == "file":
        return rest[2:] if rest.startswith("//") else rest
    if base in REMOTE_STORE_SCHEMES:
        return None
    raise ValueError(
        f"{excerpt(uri)}: store scheme {excerpt(scheme)} is not allowed; allowed: sqlite, file, "
        f"{', '.join(REMOTE_STORE_SCHEMES)} (or a path inside $PPO_HOME)"
    )
