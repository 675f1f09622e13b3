"""Object-store URIs in a config (`datasets[].path`, `output_uri`): which schemes, checked statically.

The one home for the scheme table. The runtime (kubetune.objectstore) reads and writes these URIs through
fsspec with the filesystem package named here (the `cloud` extra installs all three); credentials come from
the process environment only (a Kubernetes Secret through `envFrom`), never from the config or the URI.
"""

from __future__ import annotations

import re

from pydantic_core import PydanticCustomError

# URI scheme -> (fsspec protocol, the package that implements it). Axolotl's spellings for the same stores.
OBJECT_STORE_SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("s3", "s3fs"),
    "gs": ("gs", "gcsfs"),
    "gcs": ("gs", "gcsfs"),
    "az": ("az", "adlfs"),
    "abfs": ("abfs", "adlfs"),
    "abfss": ("abfs", "adlfs"),
}
# What each store reads from the environment (docs/kubernetes.md, "Models and data").
CREDENTIALS_HINT: dict[str, str] = {
    "s3fs": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible store "
    "other than AWS)",
    "gcsfs": "GOOGLE_APPLICATION_CREDENTIALS (the path of a service-account key file) or the node's "
    "workload identity",
    "adlfs": "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY "
    "or AZURE_STORAGE_SAS_TOKEN",
}
SCHEMES_TEXT = ", ".join(f"{scheme}://" for scheme in OBJECT_STORE_SCHEMES)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


def uri_scheme(value: str) -> str | None:
    """The lower-cased scheme of `value` when it is written `scheme://...`, else None (a path or hub id)."""
    match = _SCHEME.match(value)
    return match.group(1).lower() if match else None


def is_object_store_uri(value: str) -> bool:
    return uri_scheme(value) in OBJECT_STORE_SCHEMES


def bucket_and_key(value: str) -> tuple[str, str]:
    """(`bucket`, `key/inside/it`) of an object-store URI (the key may be empty: the whole bucket)."""
    match = _SCHEME.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a scheme://bucket/key URI")
    bucket, _, key = match.group(2).partition("/")
    return bucket, key.strip("/")


def check_object_store_uri(value: object, *, what: str, required: bool) -> object:
    """A pydantic `before` validator's body: refuse an unknown scheme, a URI without a bucket, and
    credentials written into the URI. With `required`, a value without a scheme is refused too."""
    if not isinstance(value, str):
        return value
    scheme = uri_scheme(value)
    if scheme is None:
        if required:
            raise PydanticCustomError(
                "object_store_uri",
                "{what} must be an object-store URI ({schemes})",
                {"what": what, "schemes": SCHEMES_TEXT, "fix": "write e.g. s3://bucket/prefix"},
            )
        return value
    if scheme not in OBJECT_STORE_SCHEMES:
        raise PydanticCustomError(
            "object_store_scheme",
            "{what} uses the scheme {scheme}://, which kubetune does not read",
            {
                "what": what,
                "scheme": scheme,
                "fix": f"use one of {SCHEMES_TEXT} (object storage), a hub id, or a local path "
                "(copy the data onto a volume first)",
            },
        )
    bucket, _ = bucket_and_key(value)
    if "@" in bucket or ":" in bucket:
        raise PydanticCustomError(
            "object_store_credentials",
            "{what} carries credentials or a port in its bucket part; credentials come from the environment",
            {
                "what": what,
                "fix": f"write {scheme}://bucket/key and pass the credentials as environment variables "
                f"({CREDENTIALS_HINT[OBJECT_STORE_SCHEMES[scheme][1]]}), on Kubernetes from a Secret",
            },
        )
    if not bucket:
        raise PydanticCustomError(
            "object_store_bucket",
            "{what} names no bucket",
            {"what": what, "fix": f"write {scheme}://bucket/key"},
        )
    return value
