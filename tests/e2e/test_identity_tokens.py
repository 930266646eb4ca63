"""Bad ID tokens over a real device login: the test serves a tampering IdP front and its JWKS.

The bastion's issuer is a small HTTP front (run by this test) for the real oidc-provider: it
passes the device flow through, then re-signs the ID token the provider issued, spoiled in one
way per test, with keys whose JWKS it serves. Each spoiled token must be refused with its reason.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from harness.device_login import SshClient
from joserfc import jwt
from joserfc.jwk import RSAKey

from bastion.audit import read_events
from bastion.demo.idp import complete_device_login
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


def rsa(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"},
                               private=True)


class TamperingFront:
    """The issuer the bastion trusts: forwards to the real IdP, re-signs its ID tokens."""

    def __init__(self) -> None:
        self.upstream = ""
        self.mode = "valid"
        self.key = rsa("k1")
        self.rotated = rsa("k2")
        self.published = [self.key]
        self.jwks_fetches = 0
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    text = front.fetch(self.path)[1].decode()
                    self.reply(200, text.replace(front.upstream, front.issuer).encode())
                elif self.path == "/jwks":
                    front.jwks_fetches += 1
                    keys = [k.as_dict(private=False) for k in front.published]
                    self.reply(200, json.dumps({"keys": keys}).encode())
                else:
                    self.reply(404, b"{}")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, answer = front.fetch(self.path, body, self.headers.get("Authorization"))
                if self.path == "/token" and status == 200:
                    tokens = json.loads(answer)
                    tokens["id_token"] = front.spoil(tokens["id_token"])
                    answer = json.dumps(tokens).encode()
                self.reply(status, answer)

            def reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fetch(self, path: str, body: bytes | None = None,
              auth: str | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if auth:
            headers["Authorization"] = auth
        request = urllib.request.Request(self.upstream + path, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def spoil(self, token: str) -> str:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["iss"] = self.issuer
        now = int(time.time())
        key, kid, alg = self.key, "k1", "RS256"
        match self.mode:
            case "wrong_audience":
                claims["aud"] = "another-client"
            case "wrong_issuer":
                claims["iss"] = self.upstream
            case "expired":
                claims["iat"], claims["exp"] = now - 7200, now - 3600
            case "bad_signature":
                key = rsa("k1")  # same kid, a key the IdP never published
            case "rotated":
                self.published = [self.key, self.rotated]
                key, kid = self.rotated, "k2"
            case "alg_none":
                head = base64.urlsafe_b64encode(b'{"alg":"none","kid":"k1"}').rstrip(b"=")
                body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
                return f"{head.decode()}.{body.decode()}."
        return jwt.encode({"alg": alg, "kid": kid}, claims, key)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class TamperStack(DemoStack):
    """The demo stack with the bastion's issuer pointed at a TamperingFront."""

    front: TamperingFront

    def setup_identity(self) -> None:
        super().setup_identity()
        assert self.idp is not None
        self.front = TamperingFront()
        self.front.upstream = self.idp.issuer
        self.add_cleanup(self.front.stop)
        self.merge_config({"identity": {"issuer": self.front.issuer}})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TamperStack]:
    with TamperStack(tmp_path_factory.mktemp("identity-tokens"),
                     idp_options={"device_interval": 1}) as st:
        yield st


def login(stack: TamperStack, mode: str) -> SshClient:
    stack.front.mode = mode
    # Every login uses a fresh key, so no binding from an earlier test lets it in.
    key = stack.workdir / "keys" / f"tok_{mode}_{uuid.uuid4().hex[:8]}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = key.with_name(f"ssh_config_{key.name}")
    config.write_text(stack.sso_ssh_config_path.read_text().replace(
        str(stack.sso_key_path), str(key)))
    client = SshClient(["ssh", "-F", str(config), "-p", str(stack.bastion_port),
                        f"{stack.login}@web01@{stack.bastion_host}", "--", "echo", "in"])
    complete_device_login(client.verification_url(), "alice", "alice-password")
    return client


def test_valid_token_through_the_front_is_accepted(stack: TamperStack) -> None:
    before = stack.front.jwks_fetches
    client = login(stack, "valid")
    assert client.finish() == 0 and client.stdout == "in\n"
    # The keys are fetched at most once per worker process (none if an earlier test of the
    # module fetched them) and then cached: more logins with tokens signed by the same key
    # fetch nothing more, whichever worker takes them.
    assert stack.front.jwks_fetches - before in (0, 1)
    workers = [e["workers"] for e in read_events(stack.state_dir / "audit.jsonl")
               if e["event"] == "server.start"][-1]
    for _ in range(3):
        again = login(stack, "valid")
        assert again.finish() == 0 and again.stdout == "in\n"
    assert stack.front.jwks_fetches - before <= workers


@pytest.mark.parametrize(("mode", "reason"), [
    ("wrong_audience", "ID token refused: audience 'another-client' does not include this "
                       "bastion (bastion)"),
    ("wrong_issuer", "ID token refused: issuer 'http://127.0.0.1:"),
    ("expired", "ID token refused: it has expired"),
    ("bad_signature", "ID token refused: bad signature"),
    ("alg_none", "ID token refused: algorithm 'none' is not allowed"),
])
def test_spoiled_token_is_refused(stack: TamperStack, mode: str, reason: str) -> None:
    client = login(stack, mode)
    assert client.finish() == 255 and client.stdout == ""
    assert f"bastion: {reason}" in client.stderr
    events = read_events(stack.state_dir / "audit.jsonl")
    failures = [e for e in events if e["event"] == "login.device_failure"]
    assert reason in failures[-1]["reason"]


def test_rotated_signing_key_is_fetched_once_and_accepted(stack: TamperStack) -> None:
    fetches = stack.front.jwks_fetches
    client = login(stack, "rotated")
    assert client.finish() == 0 and client.stdout == "in\n"
    assert stack.front.jwks_fetches == fetches + 1
