"""Switch the kernel implementation inside one test process, through the one knob."""

from __future__ import annotations

from kldiv._kernels import using

__all__ = ["using"]
