"""ercp-node: an open DICOM node for AI-assisted ERCP. Research use, not for diagnosis."""

__version__ = "0.1.0"
