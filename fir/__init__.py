"""fir: a compiler toolchain for distributed deep-learning programs."""

__version__ = "0.1.0"
