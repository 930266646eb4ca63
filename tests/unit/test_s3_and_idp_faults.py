"""An object store that lies, loops or redirects: nothing local is removed unverified, nothing
hangs, nothing is written outside a download folder, and a tampered folder never verifies."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from bastion.errors import ReplayError, StorageError, VerificationFailed
from bastion.replay.locate import find_in_bucket
from bastion.replay.trust import download_s3
from bastion.storage.client import make_client
from bastion.storage.objects import LockSettings, ObjectStore, prepare
from bastion.storage.reader import S3Source

FOLDER = "evidence/2026/01/01/node/20260101T000000Z-0123456789ab"


class _Paginator:
    def __init__(self, pages: Any) -> None:
        self.pages = pages

    def paginate(self, **_kwargs: Any) -> Any:
        return self.pages


class FakeClient:
    """Just enough of boto3's S3 client; ``keep`` says what the store keeps of a PUT."""

    def __init__(self, *, checksum: bool = True, lock: bool = True,
                 keep: Any = lambda data: data, pages: Any = ()) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self.checksum, self.lock, self.keep, self.pages = checksum, lock, keep, pages

    def put_object(self, *, Key: str, Body: Any, ChecksumSHA256: str,
                   **args: Any) -> dict[str, Any]:
        self.objects[Key] = (self.keep(Body.read()), {"sum": ChecksumSHA256, **args})
        return {}

    def head_object(self, *, Key: str, **_args: Any) -> dict[str, Any]:
        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "404"}}, "HeadObject")
        data, args = self.objects[Key]
        head: dict[str, Any] = {"ContentLength": len(data), "VersionId": "v1",
                                "Metadata": args.get("Metadata", {})}
        if self.checksum:
            head["ChecksumSHA256"] = args["sum"]
        if self.lock and "ObjectLockMode" in args:
            head["ObjectLockMode"] = args["ObjectLockMode"]
            head["ObjectLockRetainUntilDate"] = args["ObjectLockRetainUntilDate"]
        return head

    def get_object(self, *, Key: str, **_args: Any) -> dict[str, Any]:
        return {"Body": io.BytesIO(self.objects[Key][0])}

    def get_paginator(self, _name: str) -> _Paginator:
        return _Paginator(self.pages)


def _item(tmp_path: Path) -> Any:
    path = tmp_path / "obj.gz"
    path.write_bytes(gzip.compress(b"recorded output\n" * 50))
    return prepare("k/1-shell.cast.gz", path, "c" * 64, True, 1 << 30)


def test_a_store_without_checksums_has_the_object_read_back(tmp_path: Path) -> None:
    # The content-hash metadata is what bastion sent; the zeros the store kept must be noticed.
    client = FakeClient(checksum=False, keep=lambda data: bytes(len(data)))
    with pytest.raises(StorageError, match="read back differ"):
        ObjectStore(client, "b").place(_item(tmp_path), LockSettings(None, 0), lambda _n: None)
    honest = FakeClient(checksum=False)
    assert ObjectStore(honest, "b").place(_item(tmp_path), LockSettings(None, 0),
                                          lambda _n: None).uploaded


def test_an_object_lock_the_store_does_not_show_is_not_taken_for_granted(
        tmp_path: Path) -> None:
    lock = LockSettings("GOVERNANCE", 3)
    with pytest.raises(StorageError, match="no GOVERNANCE Object Lock"):
        ObjectStore(FakeClient(lock=False), "b").place(_item(tmp_path), lock, lambda _n: None)
    assert ObjectStore(FakeClient(), "b").place(_item(tmp_path), lock, lambda _n: None).uploaded


def test_a_retention_shorter_than_asked_is_refused(tmp_path: Path) -> None:
    client = FakeClient()
    store = ObjectStore(client, "b")
    item = _item(tmp_path)
    client.objects[item.key] = (item.path.read_bytes(), {
        "sum": item.checksum, "ObjectLockMode": "GOVERNANCE",
        "ObjectLockRetainUntilDate": dt.datetime.now(dt.UTC) + dt.timedelta(days=1)})
    head = client.head_object(Key=item.key)
    head["LastModified"] = dt.datetime.now(dt.UTC)
    with pytest.raises(StorageError, match="retained only until"):
        store._confirm_existing_lock(LockSettings("GOVERNANCE", 30), head, item.key)


def _version(key: str, version: str = "v1") -> dict[str, Any]:
    return {"Key": key, "VersionId": version, "IsLatest": True}


def test_a_listing_that_never_ends_is_an_error() -> None:
    def forever() -> Iterator[dict[str, Any]]:
        for _ in range(3000):  # bounded here only so that the old code ends too
            yield {"Versions": [_version(f"{FOLDER}/manifest.json")]}
    with pytest.raises(StorageError, match="listing"):
        list(S3Source(FakeClient(pages=forever()), "b", "evidence").sessions())


def test_a_malformed_listing_is_one_line() -> None:
    pages = [{"Versions": [{"VersionId": "v1", "IsLatest": True}]}]
    with pytest.raises(StorageError, match="malformed listing"):
        list(S3Source(FakeClient(pages=pages), "b", "evidence").sessions())
    pages = [{"Versions": [_version(f"{FOLDER}/manifest.json")],
              "DeleteMarkers": [{"Key": f"{FOLDER}/manifest.json", "VersionId": "v2"}]}]
    client = FakeClient(pages=pages)
    client.objects[f"{FOLDER}/manifest.json"] = (b"{}", {})
    [evidence] = S3Source(client, "b", "evidence").sessions()
    assert any("delete marker" in p for p in evidence.problems)
    client = FakeClient(pages=[{"Contents": [{"Size": 1}]}])
    with pytest.raises(StorageError, match="malformed listing"):
        find_in_bucket(client, "b", "evidence", "20260101T000000Z-0123456789ab")


def _bucket(**files: bytes) -> FakeClient:
    client = FakeClient(pages=[{"Versions": [_version(f"{FOLDER}/{n}") for n in files]}])
    client.objects = {f"{FOLDER}/{n}": (data, {}) for n, data in files.items()}
    return client


def test_a_plain_copy_beside_the_gz_must_match_and_an_unlisted_one_is_seen() -> None:
    client = _bucket(**{"1-shell.cast.gz": gzip.compress(b"real\n"), "1-shell.cast": b"fake\n",
                        "2-exec.stdout": b"unlisted\n"})
    [evidence] = S3Source(client, "b", "evidence").sessions()
    assert evidence.stored_names == {"1-shell.cast", "2-exec.stdout"}
    with pytest.raises(VerificationFailed, match="differs"):
        b"".join(evidence.open_file("1-shell.cast"))
    client = _bucket(**{"1-shell.cast.gz": gzip.compress(b"real\n"), "1-shell.cast": b"real\n"})
    [evidence] = S3Source(client, "b", "evidence").sessions()
    assert b"".join(evidence.open_file("1-shell.cast")) == b"real\n"


def test_replay_never_writes_outside_its_download_folder(tmp_path: Path) -> None:
    dest = tmp_path / "private"
    dest.mkdir()
    client = FakeClient(pages=[{"Versions": [_version(f"{FOLDER}/../manifest.json"),
                                             _version(f"{FOLDER}/../1-shell.cast.gz")]}])
    client.objects = {f"{FOLDER}/../manifest.json": (b"{}", {}),
                      f"{FOLDER}/../1-shell.cast.gz": (gzip.compress(b"x"), {})}
    with pytest.raises(ReplayError, match="not a plain"):
        download_s3(client, "b", FOLDER, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private"]


class _Redirect(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.send_response(307 if self.command != "GET" else 301)
        self.send_header("Location", "http://127.0.0.2:9/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_PUT = _answer

    def log_message(self, *_args: Any) -> None:
        pass


def test_a_redirecting_endpoint_is_one_line_not_a_recursion(tmp_path: Path,
                                                             monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = make_client(f"http://127.0.0.1:{server.server_address[1]}", max_attempts=1)
        with pytest.raises(StorageError, match="redirected"):
            list(S3Source(client, "bkt", "evidence").sessions())
        with pytest.raises(StorageError, match="redirected"):
            ObjectStore(client, "bkt").object_lock_enabled()
    finally:
        server.shutdown()
        server.server_close()


def test_an_object_already_there_is_read_back_a_piece_at_a_time(tmp_path: Path) -> None:
    # Someone else's object under our key: the same content plus a second gzip member (content
    # no hash of ours covers), or a bomb. Refused, without inflating it whole.
    content = b"recorded output\n" * 50
    item = _item(tmp_path)
    item = prepare(item.key, item.path, hashlib.sha256(content).hexdigest(), True, 1 << 30)
    store = ObjectStore(FakeClient(), "b")
    for planted in (gzip.compress(content) + gzip.compress(b"more\n"),
                    gzip.compress(bytes(64 << 20))):
        store.client.objects[item.key] = (planted, {"sum": "other"})
        with pytest.raises(StorageError):
            store._read_back(item)
    store.client.objects[item.key] = (gzip.compress(content), {"sum": "other"})
    store._read_back(item)  # the same content: no error
