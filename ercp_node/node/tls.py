"""TLS contexts for the SCP (pynetdicom's `ssl_context`) and for export destinations (`tls_args`).

Server side: the node's certificate and key; with a CA configured, clients must present a certificate that CA
signed (mutual TLS). TLS 1.2 or newer only; for TLS 1.2 only forward-secret AEAD suites (BCP 195 / RFC 9325),
which dcmtk's default "Non-downgrading BCP 195" profile offers; TLS 1.3 suites are all of that kind.

pynetdicom wraps each accepted socket in the server's accept loop, and Python's default is to complete the
handshake right there, so one client that connects and sends nothing stalls every other client. The server
context here defers the handshake to the first read, which happens in that association's own thread.
"""

from __future__ import annotations

import ssl

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!aDSS"


class ConfigTLSError(ValueError):
    """A certificate, key or CA file that cannot be loaded (the message never holds key material)."""


def _no_passphrase(*_):
    # An encrypted key would otherwise make OpenSSL prompt on the terminal and hang a service.
    raise ConfigTLSError("the TLS key is passphrase-protected; give the node an unencrypted key file (mode 0600)")


class _DeferredHandshakeContext(ssl.SSLContext):
    def wrap_socket(self, sock, *args, **kwargs):
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def _why(exc: OSError) -> str:
    return f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc.strerror or 'invalid'}"


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, what: str) -> None:
    try:
        ctx.load_cert_chain(cert, key or None, password=_no_passphrase)
    except ConfigTLSError:
        raise
    except (OSError, ssl.SSLError) as exc:
        raise ConfigTLSError(f"{what}: cannot load certificate {cert!r} with key {key!r} "
                             f"({_why(exc)})") from None


def _load_ca(ctx: ssl.SSLContext, ca: str, what: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigTLSError(f"{what}: cannot load CA file {ca!r} ({_why(exc)})") from None


def server_context(cert: str, key: str, ca: str = "") -> ssl.SSLContext:
    """Context for `AE.start_server(ssl_context=...)`; with `ca`, a client certificate is required and verified."""
    ctx = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    _load_chain(ctx, cert, key, "node.tls_cert/node.tls_key")
    if ca:
        _load_ca(ctx, ca, "node.tls_ca")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """Context for an export association: the peer is verified (against `ca`, else the system store) including its
    host name; the node's own certificate is presented when it has one (for destinations that require it)."""
    if ca:  # a private CA only: the system store is not consulted
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _load_ca(ctx, ca, "destination tls_ca")
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    if cert:
        _load_chain(ctx, cert, key, "node.tls_cert/node.tls_key (client certificate)")
    return ctx
