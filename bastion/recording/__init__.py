"""Session recording: asciicast for pty channels, byte-exact streams for the others, in a locked,
crash-recovered spool directory.

See layout.py for the format (file names, kinds, states), spool.py for the spool, session.py for
a session's directory and session.json, asciicast.py and streams.py for the hot-path writers,
recovery.py for crash recovery.
"""

from bastion.recording.asciicast import CastWriter
from bastion.recording.layout import ChannelKind, SessionState
from bastion.recording.session import ChannelWriter, SessionRecording
from bastion.recording.spool import Spool
from bastion.recording.streams import StreamWriter

__all__ = ["CastWriter", "ChannelKind", "ChannelWriter", "SessionRecording", "SessionState",
           "Spool", "StreamWriter"]
