"""ccm: customer communication management."""

__version__ = "0.1.0"
