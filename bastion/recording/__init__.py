"""Session recording: asciicast for pty channels, byte-exact streams for the others, in a locked,
crash-recovered spool directory.

See layout.py for the format (file names, kinds, states), spool.py for the session directory,
asciicast.py and streams.py for the hot-path writers, recovery.py for crash recovery.
"""

from bastion.recording.asciicast import CastWriter
from bastion.recording.layout import ChannelKind, SessionState
from bastion.recording.spool import ChannelWriter, SessionRecording, Spool
from bastion.recording.streams import StreamWriter

__all__ = ["CastWriter", "ChannelKind", "ChannelWriter", "SessionRecording", "SessionState",
           "Spool", "StreamWriter"]
