"""DATABASE_URL → a Django DATABASES entry (no extra dependency for one small parser)."""

import os
from urllib.parse import unquote, urlsplit


def database_from_url(url=None, engine="django_pooled_pg", **extra):
    url = url or os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    parts = urlsplit(url)
    return {
        "ENGINE": engine,
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        **extra,
    }
