"""Fail-fast checks of a `gs://` path before a command reads or writes it.

TensorFlow's GCS filesystem, which reads and writes gs:// for `storage`, loops forever in
`makedirs` on a bucket that does not exist, and a missing credential or permission would only
show deep inside a run (or after a background save). So every command checks each gs:// path it
was given first, with google-cloud-storage (which Orbax needs
for gs:// anyway) and a bounded, logged retry of transient errors: the credentials, that the
bucket exists, that objects under the path can be listed and, for an output path, that an object
can be written and deleted there. A failure raises `GcsAccessError` naming the bucket and the
fix; commands exit 2 with it before anything is written.

`STORAGE_EMULATOR_HOST` (a local GCS server, as in the tests) makes the check use no credentials.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from alexatm_jax.storage import is_remote

if TYPE_CHECKING:
    from google.api_core.retry import Retry
    from google.cloud.storage import Client

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0  # one HTTP request of the check
RETRY_DEADLINE_S = 30.0  # all retries of one check together
PROBE_NAME = ".alexatm-write-check"


class GcsAccessError(ValueError):
    """A gs:// path that cannot be used: no credentials, no bucket or no permission."""


def split_gcs_url(url: str) -> tuple[str, str]:
    """(bucket, object prefix without a leading or trailing '/') of `gs://bucket/prefix`."""
    if not url.startswith("gs://"):
        raise ValueError(f"{url} is not a gs:// URL")
    bucket, _, prefix = url[len("gs://") :].partition("/")
    if not bucket:
        raise GcsAccessError(f"{url} names no bucket: write gs://BUCKET/PATH")
    return bucket, prefix.strip("/")


def _client(where: str) -> Client:
    """A google-cloud-storage client with the default credentials (anonymous for an emulator);
    `where` starts the message of the GcsAccessError raised when there are none."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client()
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, project = google.auth.default()
    except DefaultCredentialsError as error:
        raise GcsAccessError(
            f"{where}: no Google Cloud credentials to read the bucket with ({' '.join(str(error).split())[:200]}): on a TPU/GCE "
            "VM the VM's service account is used; elsewhere run `gcloud auth "
            "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS to a key file"
        ) from error
    return storage.Client(project=project, credentials=credentials)


def _retry(what: str) -> Retry:
    """google-api-core Retry of transient errors (429, 500, 503, connection errors) with
    exponential back-off 1 s .. 8 s, at most RETRY_DEADLINE_S in all; each retry is logged."""
    from google.api_core.retry import Retry, if_transient_error

    def log(error: Exception) -> None:
        logger.warning("%s: transient error (%s); retrying", what, str(error).splitlines()[0])

    return Retry(
        predicate=if_transient_error,
        initial=1.0,
        maximum=8.0,
        multiplier=2.0,
        timeout=RETRY_DEADLINE_S,
        on_error=log,
    )


def check_gcs_path(url: str, *, what: str, write: bool) -> None:
    """Check that `url` (gs://bucket/prefix) can be listed and, if `write`, written.

    `what` names the path in messages (e.g. "MODEL_DIR"). Raises GcsAccessError naming the
    bucket and the fix; transient errors are retried (logged) for at most RETRY_DEADLINE_S.
    A local path or another scheme is not checked.
    """
    if not url.startswith("gs://"):
        return
    from google.api_core import exceptions

    bucket_name, prefix = split_gcs_url(url)
    start = time.monotonic()
    retry = _retry(f"checking {what} {url}")
    try:
        client = _client(f"{what} {url}")
        bucket = client.bucket(bucket_name)
        list(
            client.list_blobs(
                bucket, prefix=prefix, max_results=1, timeout=REQUEST_TIMEOUT_S, retry=retry
            )
        )
        if write:
            name = f"{PROBE_NAME}-{socket.gethostname()}-{os.getpid()}"
            probe = bucket.blob(f"{prefix}/{name}" if prefix else name)
            probe.upload_from_string(b"", timeout=REQUEST_TIMEOUT_S, retry=retry)
            probe.delete(timeout=REQUEST_TIMEOUT_S, retry=retry)
    except exceptions.NotFound as error:
        raise GcsAccessError(
            f"{what} {url}: the bucket gs://{bucket_name} does not exist (or this account cannot "
            f"see it): fix the bucket name, or create it with `gcloud storage buckets create "
            f"gs://{bucket_name} --location=REGION`"
        ) from error
    except exceptions.Unauthorized as error:
        raise GcsAccessError(
            f"{what} {url}: bucket gs://{bucket_name} refused the credentials (HTTP 401: "
            f"{error.message[:120]}): renew them (`gcloud auth application-default login`) or "
            "point GOOGLE_APPLICATION_CREDENTIALS at a valid key file"
        ) from error
    except exceptions.Forbidden as error:
        need = "storage.objects.list/create/delete (roles/storage.objectUser)"
        if not write:
            need = "storage.objects.list/get (roles/storage.objectViewer)"
        raise GcsAccessError(
            f"{what} {url}: no permission on bucket gs://{bucket_name} (HTTP {error.code}: "
            f"{error.message[:120]}): grant the account {need} on the bucket, or use "
            "credentials that have it"
        ) from error
    except exceptions.GoogleAPIError as error:
        raise GcsAccessError(
            f"{what} {url}: bucket gs://{bucket_name} could not be reached in "
            f"{time.monotonic() - start:.0f} s ({' '.join(str(error).split())[:200]}); check "
            "the network and try again"
        ) from error
    except OSError as error:
        raise GcsAccessError(
            f"{what} {url}: bucket gs://{bucket_name} could not be reached ({error}); check "
            "the network and try again"
        ) from error


def check_paths(paths: dict[str, str | None], *, write: tuple[str, ...] = ()) -> None:
    """`check_gcs_path` for every gs:// value of {what: path}; those named in `write` are
    checked for writing, the others for reading."""
    for what, path in paths.items():
        if path and is_remote(path):
            check_gcs_path(str(path), what=what, write=what in write)
