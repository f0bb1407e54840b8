"""Securing one asyncua client before it connects, and explaining a refused session.

`apply_security` asks the server for its endpoints over an unsecured discovery channel, picks
one (`drivers.opcua.security.choose`), and for a secured one makes sure the client certificate
exists, checks the server certificate against the trust list or pin, and configures the client.
`rejection` turns the status code of a refused CreateSession/ActivateSession into a message
that says what to fix, without any secret in it.
"""

from __future__ import annotations

import asyncio

from asyncua.client.client import Client
from asyncua.ua.status_codes import StatusCodes

from drivers.opcua import security as secmod
from drivers.opcua.subscription import status_name

_CERT_REJECTED = {
    StatusCodes.BadSecurityChecksFailed,
    StatusCodes.BadCertificateUntrusted,
    StatusCodes.BadCertificateInvalid,
    StatusCodes.BadCertificateUriInvalid,
}
_USER_REJECTED = {
    StatusCodes.BadIdentityTokenRejected,
    StatusCodes.BadIdentityTokenInvalid,
    StatusCodes.BadUserAccessDenied,
}


async def apply_security(
    client: Client, sec: secmod.Security, endpoint: str, timeout_s: float
) -> secmod.Choice:
    """Configure `client` for the endpoint `sec` selects; SecurityError when it cannot."""
    async with asyncio.timeout(timeout_s):  # not wait_for: it can lose a cancellation on 3.11
        endpoints = await client.connect_and_get_server_endpoints()
    choice = secmod.choose(endpoints, sec)
    if choice.policy == "None":
        return choice
    if choice.server_cert is None:
        raise secmod.SecurityError(f"{endpoint}: the secured endpoint has no certificate")
    cert_file, key_file = await asyncio.to_thread(secmod.ensure_client_cert, sec)
    await asyncio.to_thread(secmod.check_server_cert, choice.server_cert, sec, endpoint)
    client.application_uri = secmod.cert_uri(cert_file) or sec.app_uri()
    await client.set_security(
        choice.policy_class,
        str(cert_file),
        str(key_file),
        server_certificate=choice.server_cert,
        mode=choice.message_mode,
    )
    return choice


def rejection(code: int, sec: secmod.Security | None) -> str:
    """What a refused session means and how to fix it."""
    name = status_name(code)
    if code in _CERT_REJECTED and sec is not None:
        thumb = "unknown"
        if sec.cert_file.is_file():
            thumb = secmod.thumbprint(sec.cert_file.read_bytes())
        return (
            f"the server rejected the client certificate ({name}); trust the client "
            f"certificate {thumb} on the server (`edge-agent certs` shows it)"
        )
    if code in _USER_REJECTED:
        return f"the server rejected the user identity ({name}); check username/password"
    return f"connect failed ({name})"
