"""The bucket's key layout, written by ``bastion upload`` and read by ``bastion verify``::

    <prefix>/<YYYY>/<MM>/<DD>/<node_id>/<session_id>/<file>

The date is the session's UTC start date (from its id); ``<file>`` is a session file gzipped
(``1-shell.cast.gz``, ``1-exec.stdout.gz``, ``session.json.gz``), then ``manifest.sig`` and
``manifest.json`` as they are.
"""

from __future__ import annotations

from bastion.errors import ManifestError
from bastion.evidence.manifest import Manifest
from bastion.recording.layout import COMPRESSED_SUFFIX, session_date


def session_prefix(prefix: str, manifest: Manifest) -> str:
    """The key prefix of one session: ``<prefix>/YYYY/MM/DD/<node>/<session_id>``."""
    date = session_date(manifest.session_id)
    if date is None:
        raise ManifestError(f"{manifest.session_id!r} is not a session id")
    parts = [prefix] if prefix else []
    parts += [date, manifest.node_id, manifest.session_id]
    return "/".join(parts)


def object_name(file_name: str) -> str:
    """The object name a session file is stored under (gzipped)."""
    return file_name + COMPRESSED_SUFFIX


def split_key(key: str) -> tuple[str, str | None, str]:
    """A key as (session folder key, node folder name or None, file name)."""
    folder, _, name = key.rpartition("/")
    parts = folder.split("/")
    node = parts[-2] if len(parts) > 1 else None
    return folder, node, name
