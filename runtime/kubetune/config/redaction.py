"""Credentials out of URIs before they are shown anywhere (log lines, ConfigMaps, status, events).

One home for the rule, used by the runtime (what rank 0 reports about its trackers) and again by the
operator (which never trusts what a pod wrote). A tracking URI may carry a secret in its userinfo
(`https://user:token@host`) or its query (`?token=...`); both are dropped. What is left still names
the server, so `kubectl describe ftj` leads to the run without leading to the key.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def without_credentials(uri: str, *, keep_fragment: bool = False) -> str:
    """`uri` with no userinfo and no query (nor fragment, unless kept: MLflow's run URLs route by it).

    Text that is not a URI with a network location (a local path, `databricks`) is returned as is,
    except that a leading `user:token@` is dropped too: without a scheme it is still a secret.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: show nothing rather than a guess
        return ""
    if not parts.netloc:
        head, slash, rest = uri.partition("/")
        return head.rsplit("@", 1)[-1] + slash + rest
    host = parts.netloc.rsplit("@", 1)[-1]
    fragment = parts.fragment if keep_fragment else ""
    return urlunsplit((parts.scheme, host, parts.path, "", fragment))
