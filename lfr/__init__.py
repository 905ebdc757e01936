"""lfr: live facial recognition with accountability."""

__version__ = "0.1.0"
