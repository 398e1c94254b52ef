"""raymlc: multi-label audio tagging with incomplete labels, on Ray."""

__version__ = "0.1.0"
