"""Every built-in detector: values it must mask, and look-alikes it must leave visible."""

from __future__ import annotations

import pytest

from bastion.masking import mask_text
from bastion.masking.detectors import BUILTIN_NAMES
from bastion.masking.engine import Scanner
from bastion.masking.stream import StreamMasker

GH = "ghp_" + "A1b2C3d4E5" * 3 + "f6G7h8"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
       "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx4\nQ2hlY2sgbWU=\n"
       "-----END RSA PRIVATE KEY-----")
OPENSSH = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\n"
           "AAAAtzc2gtZWQyNTUx\n-----END OPENSSH PRIVATE KEY-----")

SCANNER = Scanner()  # compiling takes a moment: one for the module

# (detector, text, the secret that must disappear, what must stay visible)
POSITIVE = [
    ("card", "pay 4111 1111 1111 1111 now", "4111 1111 1111", "**** **** **** 1111"),
    ("card", "pay 4111-1111-1111-1111 now", "4111-1111-1111", "****-****-****-1111"),
    ("card", "pay 5500005555555559.", "550000555555", "************5559"),
    ("card", "amex 378282246310005 x", "37828224631", "***********0005"),
    ("aws_access_key_id", "key AKIAZ7QPRSTUVWXY2345 x", "AKIAZ7QPRSTUVWXY2345", "key *"),
    ("aws_access_key_id", "key ASIAZ7QPRSTUVWXY2345 x", "ASIAZ7QPRSTUVWXY2345", "key *"),
    ("aws_secret_access_key",
     "aws_secret_access_key = abcdEFGHijklMNOPqrstUVWX/yz0123456789+ab\n",
     "abcdEFGHijklMNOPqrstUVWX/yz0123456789+ab", "aws_secret_access_key = ****"),
    ("aws_secret_access_key",
     "AWS_SECRET_ACCESS_KEY=abcdEFGHijklMNOPqrstUVWX/yz0123456789+ab\n",
     "abcdEFGHijklMNOPqrstUVWX/yz0123456789+ab", "AWS_SECRET_ACCESS_KEY="),
    ("private_key", PEM, "MIIEowIBAAKCAQEAx4", "-----END RSA PRIVATE KEY-----"),
    ("private_key", OPENSSH, "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU", "-----BEGIN OPENSSH PRIVATE"),
    ("jwt", f"token: {JWT} end", JWT, "token: ***"),
    ("github_token", f"GH {GH} end", GH, "GH ****"),
    ("github_token", "x github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz y",
     "github_pat_11ABCDEFG0123456789_abcdef", "x ***"),
    ("gitlab_token", "x glpat-AbCdEfGhIjKlMnOpQrSt y", "glpat-AbCdEfGhIjKlMnOpQrSt", "x **"),
    ("slack_token", "x xoxb-123456789012-AbCdEfGhIj y", "xoxb-123456789012-AbCdEfGhIj", "x *"),
    ("slack_token", "x xoxp-123456789012-AbCdEfGhIj y", "xoxp-123456789012", "x *"),
    ("stripe_key", "x sk_live_4eC39HqLyjWDarjtT1zdp7dc y", "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
     "x *"),
    ("stripe_key", "x rk_live_4eC39HqLyjWDarjtT1zdp7dc y", "rk_live_4eC39", "x *"),
    ("authorization_header", "Authorization: Bearer abc.DEF-123_xyz\n", "abc.DEF-123_xyz",
     "Authorization: Bearer ***"),
    ("authorization_header", "authorization: basic dXNlcjpwYXNz\n", "dXNlcjpwYXNz",
     "authorization: basic ***"),
    ("url_password", "clone https://bob:hunter22@git.example.com/r.git", "hunter22",
     "https://bob:********@git.example.com"),
    ("url_password", "postgres://app:S3cr3t!@db:5432/x", "S3cr3t!", "postgres://app:*******@db"),
    ("cli_password", "$ mysql -u root -pTopSecret1 shop\n", "TopSecret1", "mysql -u root -p****"),
    ("cli_password", "tool --password=TopSecret1 --x\n", "TopSecret1", "--password=****"),
    ("cli_password", "tool --password TopSecret1 --x\n", "TopSecret1", "--password ****"),
    ("cli_password", "sshpass -p TopSecret1 ssh h\n", "TopSecret1", "sshpass -p ****"),
    ("env_secret", "export GITHUB_TOKEN=abc123def\n", "abc123def", "export GITHUB_TOKEN=***"),
    ("env_secret", "DB_PASSWORD=TopSecret1 ./run\n", "TopSecret1", "DB_PASSWORD=****"),
    ("env_secret", "APP_SECRET=TopSecret1\n", "TopSecret1", "APP_SECRET=****"),
]

NEGATIVE = [
    "commit 3f786850e387550fdab836ed7e6dc881de23001b (HEAD -> main)",
    "request 123e4567-e89b-12d3-a456-426614174000 done",
    "order 4111111111111112 (fails Luhn)",
    "id 1234567812345678",
    "key AKIAIOSFODNN7EXAMPLE (the AWS documentation key)",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ghp_short",
    "eyJub3QiOiJhIGp3dCJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl (header without alg)",
    "https://example.com/path@v2 and user@host:~/dir",
    "mysql -u root -p shop",
    "the password is set; PASSWORD= unset",
    "timestamp 1732971234123456789 ns",
    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----",
    "Authorization: required",
]


@pytest.mark.parametrize(("name", "text", "secret", "shown"), POSITIVE)
def test_detector_masks_its_values(name: str, text: str, secret: str, shown: str) -> None:
    masker = StreamMasker(SCANNER)
    out = masker.mask_all(text.encode()).decode()
    assert secret not in out
    assert shown.rstrip("*") in out
    assert len(out) == len(text), "the mask keeps the width"
    assert masker.counts[name] == 1, dict(masker.counts)


@pytest.mark.parametrize("text", NEGATIVE)
def test_look_alikes_stay_visible(text: str) -> None:
    masker = StreamMasker(SCANNER)
    assert masker.mask_all(text.encode()).decode() == text
    assert not masker.counts


def test_every_builtin_detector_has_a_vector() -> None:
    assert {name for name, *_ in POSITIVE} == BUILTIN_NAMES


def test_mask_text_for_command_lines() -> None:
    line = f"curl -H 'Authorization: Bearer {GH}' https://u:pw1234@x/ --password=abc"
    masked = mask_text(line)
    assert GH not in masked and "pw1234" not in masked and "abc" not in masked.split("=")[-1]
    assert len(masked) == len(line)
    assert mask_text("ls -la /tmp") == "ls -la /tmp"


def test_unicode_around_a_secret_stays_valid_utf8() -> None:
    text = f"clé: {GH} — ok ✓"
    out = StreamMasker(SCANNER).mask_all(text.encode())
    decoded = out.decode("utf-8")  # raises if the mask broke UTF-8
    assert GH not in decoded and decoded.startswith("clé: ****") and decoded.endswith("— ok ✓")


def test_allowlist_literal_and_regex() -> None:
    from bastion.masking.engine import AllowRule
    scanner = Scanner(allow=[AllowRule.parse(GH), AllowRule.parse("re:xoxb-0000")])
    text = f"{GH} xoxb-0000000000-abcdefghij sk_live_4eC39HqLyjWDarjtT1zdp7dc"
    out = StreamMasker(scanner).mask_all(text.encode()).decode()
    assert GH in out and "xoxb-0000000000-abcdefghij" in out
    assert "sk_live_4eC39" not in out
