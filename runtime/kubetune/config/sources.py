"""Object-store URIs in a config (`datasets[].path`, `output_uri`): which schemes, checked statically.

The one home for the scheme table. The runtime (kubetune.objectstore) reads and writes these URIs through
fsspec with obstore's filesystem (the `cloud` extra); credentials come from the process environment only
(a Kubernetes Secret through `envFrom`), never from the config or the URI.
"""

from __future__ import annotations

import re

from pydantic_core import PydanticCustomError

# URI scheme -> the store family (obstore, through its fsspec filesystem, implements all three; s3fs
# cannot be used: botocore requires python-dateutil<3, the kubernetes client >=3). Axolotl's spellings.
OBJECT_STORE_SCHEMES: dict[str, str] = {
    "s3": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
}
# What each store reads from the environment (docs/kubernetes.md, "Data in object storage").
CREDENTIALS_HINT: dict[str, str] = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible store "
    "other than AWS)",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS (the path of a service-account key file)",
    "azure": "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY",
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
                f"({CREDENTIALS_HINT[OBJECT_STORE_SCHEMES[scheme]]}), on Kubernetes from a Secret",
            },
        )
    if not bucket:
        raise PydanticCustomError(
            "object_store_bucket",
            "{what} names no bucket",
            {"what": what, "fix": f"write {scheme}://bucket/key"},
        )
    return value
