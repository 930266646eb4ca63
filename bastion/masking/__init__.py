"""Live masking of secrets in terminal output, recorded keystrokes and command lines.

``MaskingFactory`` is the channel-pipeline stage factory; ``mask_text`` masks one string (a
command line before it is noted); ``Scanner``/``StreamMasker`` are the engine underneath.
"""

from bastion.masking.engine import Scanner
from bastion.masking.stages import ChannelMasking, MaskingFactory, Timing, mask_text
from bastion.masking.stream import StreamMasker

__all__ = ["ChannelMasking", "MaskingFactory", "Scanner", "StreamMasker", "Timing", "mask_text"]
