"""STARTTLS with a certificate from the config, require_starttls, AUTH only after TLS."""

from __future__ import annotations

import smtplib
import ssl
import subprocess

import pytest

from email_stack import Layer, start_gateway, write_config
from servers import require_binary

# Every test talks to a `gateway email` process.
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    openssl = require_binary("openssl", "openssl")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=gw.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_stack(redis_server, certificate, tmp_path_factory):
    directory = tmp_path_factory.mktemp("email-tls")
    users = directory / "users"
    users.write_text("# user:password\nfiled:from-file\n")
    cert, key = certificate
    config, port = write_config(directory, redis_server.url, tls_cert=str(cert), tls_key=str(key),
                                require_starttls=True, auth_required=True,
                                auth_users={"alice": "s3cret"}, auth_file=str(users))
    gateway = start_gateway(config, port)
    yield config, port
    assert gateway.stop() == 0, gateway.log()


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a self-signed test certificate
    return context


def test_mail_before_starttls_is_refused_and_auth_not_offered(tls_stack):
    _, port = tls_stack
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        code, features = client.ehlo("c.test")
        assert b"STARTTLS" in features and b"AUTH" not in features
        code, text = client.mail("you@example.test")
        assert code == 530, text


async def test_auth_after_starttls(tls_stack):
    config, port = tls_stack
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=_context())
        code, features = client.ehlo("c.test")
        assert b"AUTH" in features
        code, text = client.mail("you@example.test")
        assert code == 530, text  # auth_required
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", "wrong")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=_context())
        client.login("alice", "s3cret")
        client.sendmail("you@example.test", ["inbox@demo.local"], b"Subject: over tls\r\n\r\nsecret body\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=_context())
        client.login("filed", "from-file")
        client.sendmail("you@example.test", ["inbox@demo.local"], b"Subject: file user\r\n\r\nx\r\n")
    layer = Layer(config)
    try:
        first = await layer.receive("email.receive")
        second = await layer.receive("email.receive")
        for message in (first, second):
            await layer.send(message["reply_channel"], {"type": "email.ack", "id": message["id"]})
        assert (first["subject"], first["envelope"]["tls"], first["envelope"]["auth"]) == ("over tls", True, "alice")
        assert second["envelope"]["auth"] == "filed"
    finally:
        await layer.close()


def _server_context(certificate) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, certificate))
    return context


def _relay_login(server, session, envelope, mechanism, auth_data):
    from aiosmtpd.smtp import AuthResult

    return AuthResult(success=(auth_data.login, auth_data.password) == (b"mailer", b"p@ss word"))


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("scheme", ["smtps", "smtp-starttls"])
async def test_relay_over_tls_with_auth(redis_server, certificate, tmp_path, scheme):
    from email_stack import Relay

    if scheme == "smtps":
        # aiosmtpd does not count implicit TLS as TLS for its AUTH rule
        relay = Relay(ssl_context=_server_context(certificate), authenticator=_relay_login, auth_required=True,
                      auth_require_tls=False)
        url = f"smtps://mailer:p%40ss%20word@127.0.0.1:{relay.port}"
    else:
        relay = Relay(tls_context=_server_context(certificate), require_starttls=True,
                      authenticator=_relay_login, auth_required=True)
        url = f"smtp://mailer:p%40ss%20word@127.0.0.1:{relay.port}?starttls=require"
    relay.start()
    config, port = write_config(tmp_path, redis_server.url, relay=url, relay_verify_tls=False)
    gateway = start_gateway(config, port)
    layer = Layer(config)
    try:
        await layer.send("email.send", {"type": "email.send", "id": "tls", "reply_channel": "test.tls",
                                        "from": "echo@demo.local", "to": "you@example.test", "text": "over tls"})
        sent = await layer.receive("test.tls")
        assert sent["type"] == "email.sent", sent
        (got,) = relay.handler.wait_for(1)
        assert b"over tls" in got["data"]
    finally:
        await layer.close()
        relay.stop()
        assert gateway.stop() == 0, gateway.log()
