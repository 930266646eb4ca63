"""Session recording: asciicast v2 files in a locked, crash-recovered spool directory.

See spool.py for the layout and asciicast.py for the file format and the hot-path writer.
"""

from bastion.recording.asciicast import CastWriter
from bastion.recording.spool import SessionRecording, Spool

__all__ = ["CastWriter", "SessionRecording", "Spool"]
