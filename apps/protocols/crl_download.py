"""Download a CRL from an http:// or https:// distribution point, with the device host rules, a timeout and a size limit.

The URL comes from a certificate that a tenant imported, so it is treated like a device host.
Its name is resolved once, and link-local (cloud metadata), unspecified, multicast and broadcast
addresses are rejected. The connection goes to the vetted address. HTTPS still verifies the
server's certificate against the URL's host name with the system's trusted CAs.
"""

import http.client
import ssl
import time
from urllib.parse import urlsplit

from .validators import ForbiddenHostError, check_resolved_host

FETCH_TIMEOUT_SECONDS = 10.0
MAX_CRL_BYTES = 10 * 1024 * 1024
_CHUNK_BYTES = 64 * 1024
FETCHED_SCHEMES = ("http", "https")


class CrlDownloadError(Exception):
    """A CRL could not be downloaded; the message names the URL and the cause."""


class _VettedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to a vetted address that checks the certificate against the URL's host name."""

    def __init__(self, address, port, *, server_hostname, **kwargs):
        super().__init__(address, port, **kwargs)
        self.server_hostname = server_hostname

    def connect(self):
        # HTTPSConnection.connect would send the IP address as SNI and check the certificate against it.
        # _context is the SSLContext that HTTPSConnection keeps (CPython 3.11), there is no public accessor.
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.server_hostname)


def unsupported_scheme_reason(url):
    """Return why ``url`` is not fetched (ldap:, file: and other schemes), or "" when it is http or https."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in FETCHED_SCHEMES:
        return ""
    return f"scheme {scheme or '(none)'!r} is not fetched; only http:// and https:// distribution points are"


def _connection(url, timeout):
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise CrlDownloadError(f"CRL URL {url!r} has no host name.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise CrlDownloadError(f"CRL URL {url!r} has an invalid port: {exc}.") from exc
    try:
        address = check_resolved_host(host, port)
    except ForbiddenHostError as exc:
        raise CrlDownloadError(f"CRL URL {url!r} was not fetched: {exc}") from exc
    except OSError as exc:
        raise CrlDownloadError(f"Resolving the host of CRL URL {url!r} failed: {exc}.") from exc
    if parts.scheme == "https":
        connection = _VettedHTTPSConnection(
            address, port, server_hostname=host, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(address, port, timeout=timeout)
    # urlsplit drops the brackets of an IPv6 literal, which the Host header needs again.
    host_header = f"[{host}]" if ":" in host else host
    if parts.port:
        host_header = f"{host_header}:{parts.port}"
    return connection, host_header, address


def download_crl(url, *, timeout=None, max_bytes=None):
    """Return the body of a GET of ``url``; raise CrlDownloadError on a rejected host, an HTTP error or a limit.

    ``timeout`` (seconds, default FETCH_TIMEOUT_SECONDS) bounds each socket operation and the whole body read. The read checks the
    deadline between chunks, so one slow chunk can overrun it by up to one more ``timeout``.
    Redirects are not followed, because the target would bypass the host check.
    """
    timeout = FETCH_TIMEOUT_SECONDS if timeout is None else timeout
    max_bytes = MAX_CRL_BYTES if max_bytes is None else max_bytes
    reason = unsupported_scheme_reason(url)
    if reason:
        raise CrlDownloadError(f"CRL URL {url!r} was not fetched: {reason}.")
    connection, host_header, address = _connection(url, timeout)
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    deadline = time.monotonic() + timeout
    try:
        connection.request("GET", target, headers={
            "Host": host_header, "Accept": "application/pkix-crl, application/x-pkcs7-crl, */*",
            "User-Agent": "ThermaCore CRL fetcher",
        })
        response = connection.getresponse()
        if response.status != 200:
            location = response.getheader("Location", "")
            hint = f" (redirect to {location!r} not followed)" if location else ""
            raise CrlDownloadError(f"CRL URL {url!r} returned HTTP {response.status} {response.reason}{hint}.")
        declared = response.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise CrlDownloadError(
                f"CRL URL {url!r} declares {int(declared)} bytes, more than the limit of {max_bytes} bytes."
            )
        body = bytearray()
        while chunk := response.read1(_CHUNK_BYTES):
            body += chunk
            if len(body) > max_bytes:
                raise CrlDownloadError(f"CRL URL {url!r} sent more than the limit of {max_bytes} bytes.")
            if time.monotonic() > deadline:
                raise CrlDownloadError(f"Downloading CRL URL {url!r} timed out after {timeout} s.")
        return bytes(body)
    except TimeoutError as exc:
        raise CrlDownloadError(f"Downloading CRL URL {url!r} from {address} timed out after {timeout} s.") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise CrlDownloadError(f"Downloading CRL URL {url!r} from {address} failed: {exc!r}.") from exc
    finally:
        connection.close()
