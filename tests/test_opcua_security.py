"""OPC UA security against the rig's process PLC serving secured endpoints and users: endpoint
choice, every policy and mode, the client certificate, the trust list, pinning, passwords."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import ua
from structlog.testing import capture_logs

from drivers.base import ConnectError, Quality
from drivers.opcua import OpcUaDriver
from drivers.opcua import security as sec_mod
from drivers.opcua.security import Security
from hil.plc_opcua import OpcUaPlc
from hil.tags import tags_of
from tests.fixtures.plc import PLAUSIBLE, opcua_tags, plausible

P = ua.SecurityPolicyType
ALL_POLICIES = (
    P.NoSecurity,
    P.Basic256Sha256_Sign,
    P.Basic256Sha256_SignAndEncrypt,
    P.Aes128Sha256RsaOaep_Sign,
    P.Aes128Sha256RsaOaep_SignAndEncrypt,
    P.Aes256Sha256RsaPss_Sign,
    P.Aes256Sha256RsaPss_SignAndEncrypt,
)
PASSWORD = "plc-pass-7f3a"


@pytest.fixture(scope="module")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One server key pair for the module (RSA key generation is the slow part)."""
    return tmp_path_factory.mktemp("server-pki")


@pytest_asyncio.fixture
async def secure_plc(server_pki: Path) -> AsyncIterator[OpcUaPlc]:
    """The process PLC offering every policy and mode, with a user `operator`."""
    plc = OpcUaPlc(
        tags_of("process"),
        security_policies=ALL_POLICIES,
        pki_dir=server_pki,
        users={"operator": PASSWORD},
    )
    async with plausible(plc):
        yield plc


def make(plc: OpcUaPlc, sec: Security, **kw: object) -> OpcUaDriver:
    return OpcUaDriver("p", plc.endpoint, opcua_tags(), security=sec, timeout_s=3, **kw)  # type: ignore[arg-type]


async def test_untrusted_server_is_refused_naming_thumbprint(
    secure_plc: OpcUaPlc, tmp_path: Path
) -> None:
    """An unknown server certificate: ConnectError naming its thumbprint, the trust folder and
    the command; the certificate lands in rejected/ for review."""
    sec = Security(tmp_path / "pki")
    d = make(secure_plc, sec)
    with pytest.raises(ConnectError) as err:
        await d.connect()
    await d.aclose()
    assert secure_plc.server_certificate is not None
    thumb = sec_mod.thumbprint(secure_plc.server_certificate)
    text = str(err.value)
    assert thumb in text and str(sec.trusted_dir) in text and "edge-agent certs" in text
    assert (sec.rejected_dir / f"{thumb}.der").read_bytes() == secure_plc.server_certificate
    assert secure_plc.session_count() == 0


async def test_auto_picks_strongest_and_client_cert_is_kept(
    secure_plc: OpcUaPlc, tmp_path: Path
) -> None:
    """With the server trusted, auto chooses Aes256_Sha256_RsaPss + SignAndEncrypt; the client
    certificate is generated once in <pki>/own and reused by the next connect."""
    sec = Security(tmp_path / "pki")
    assert secure_plc.server_certificate is not None
    sec_mod.trust(secure_plc.server_certificate, sec)
    d = make(secure_plc, sec)
    await d.connect()
    try:
        assert d.chosen == ("Aes256_Sha256_RsaPss", "SignAndEncrypt")
        assert all(s.quality is Quality.GOOD for s in await d.read())
        first = sec.cert_file.read_bytes()
    finally:
        await d.aclose()
    await d.connect()
    await d.aclose()
    assert sec.cert_file.read_bytes() == first
    info = sec_mod.cert_info(sec.cert_file)
    assert info.thumbprint == sec_mod.thumbprint(first) and info.uri


POLICY_NAMES = ["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_each_policy_and_mode_reads_and_subscribes(
    secure_plc: OpcUaPlc, tmp_path: Path, policy: str, mode: str
) -> None:
    """Every supported policy in both modes: a read and a subscription deliver GOOD values."""
    sec = Security(tmp_path / "pki", policy=policy, mode=mode)
    assert secure_plc.server_certificate is not None
    sec_mod.trust(secure_plc.server_certificate, sec)
    d = make(secure_plc, sec)
    await d.connect()
    try:
        assert d.chosen == (policy, mode)
        got = {s.tag: s for s in await d.read()}
        assert got["flow"].value == PLAUSIBLE["flow"]
        it = d.subscribe()
        batch = await anext(it)
        assert {s.tag for s in batch} == set(d.tags)
        await it.aclose()  # type: ignore[attr-defined]
    finally:
        await d.aclose()


async def test_pinned_thumbprint_accepts_and_mismatch_refuses(
    secure_plc: OpcUaPlc, tmp_path: Path
) -> None:
    """A pinned thumbprint replaces the trust list; a different pin is refused with both."""
    assert secure_plc.server_certificate is not None
    thumb = sec_mod.thumbprint(secure_plc.server_certificate)
    ok = make(secure_plc, Security(tmp_path / "a", server_thumbprint=thumb.lower()))
    await ok.connect()
    await ok.aclose()
    wrong = "AB" * 20
    bad = make(secure_plc, Security(tmp_path / "b", server_thumbprint=wrong))
    with pytest.raises(ConnectError) as err:
        await bad.connect()
    await bad.aclose()
    assert thumb in str(err.value) and wrong in str(err.value)


async def test_username_password_and_no_secret_in_errors_or_logs(
    secure_plc: OpcUaPlc, tmp_path: Path
) -> None:
    """The right password opens a session; a wrong one is a clear ConnectError; neither the
    password nor the wrong one appears in the error or any log line."""
    sec = Security(tmp_path / "pki")
    assert secure_plc.server_certificate is not None
    sec_mod.trust(secure_plc.server_certificate, sec)
    wrong_pw = "wrong-pass-91c2"
    with capture_logs() as logs:
        good = make(secure_plc, sec, username="operator", password=PASSWORD)
        await good.connect()
        assert secure_plc.session_count() == 1
        await good.aclose()
        bad = make(secure_plc, sec, username="operator", password=wrong_pw)
        with pytest.raises(ConnectError) as err:
            await bad.connect()
        await bad.aclose()
    assert "user identity" in str(err.value)
    everything = str(err.value) + repr(err.value.__cause__) + repr(logs)
    assert PASSWORD not in everything and wrong_pw not in everything


async def test_auto_on_none_only_server_warns(opcua_plc: OpcUaPlc, tmp_path: Path) -> None:
    """A server that offers only None: auto uses it and logs one warning; no PKI is created."""
    sec = Security(tmp_path / "pki")
    with capture_logs() as logs:
        d = make(opcua_plc, sec)
        await d.connect()
        await d.aclose()
        await d.connect()
        await d.aclose()
    assert d.chosen == ("None", "None")
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["opcua server offers no security, using policy None"]
    assert not sec.pki_dir.exists()


def test_choose_ranks_mode_then_policy() -> None:
    """SignAndEncrypt beats Sign whatever the policy; unknown policies are ignored; explicit
    settings filter; nothing matching is a clear error listing what is offered."""

    def ep(policy: str, mode: ua.MessageSecurityMode) -> ua.EndpointDescription:
        return ua.EndpointDescription(
            SecurityPolicyUri=f"http://opcfoundation.org/UA/SecurityPolicy#{policy}",
            SecurityMode=mode,
            ServerCertificate=b"\x30\x82\x00\x01\x00",
        )

    m = ua.MessageSecurityMode
    eps = [
        ep("None", m.None_),
        ep("Basic256Sha256", m.SignAndEncrypt),
        ep("Aes256_Sha256_RsaPss", m.Sign),
        ep("Basic128Rsa15", m.SignAndEncrypt),
    ]
    auto = Security(Path("x"))
    assert sec_mod.choose(eps, auto).policy == "Basic256Sha256"
    assert sec_mod.choose(eps, auto).mode == "SignAndEncrypt"
    pss = Security(Path("x"), policy="Aes256_Sha256_RsaPss")
    assert (sec_mod.choose(eps, pss).policy, sec_mod.choose(eps, pss).mode) == (
        "Aes256_Sha256_RsaPss",
        "Sign",
    )
    assert sec_mod.choose(eps, None).policy == "None"
    with pytest.raises(sec_mod.SecurityError, match="Basic256Sha256/SignAndEncrypt"):
        sec_mod.choose(eps, Security(Path("x"), policy="Aes128_Sha256_RsaOaep"))
