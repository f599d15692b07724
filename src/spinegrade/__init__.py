"""spinegrade: grade degenerative lumbar spine narrowing on MRI. Research output, not a diagnosis."""

__version__ = "0.1.0"
DISCLAIMER = "Research use only: not a medical device and not for diagnosis."
