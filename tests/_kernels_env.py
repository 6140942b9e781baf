"""Switch the kernel implementation inside one test process, through the one knob."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from kldiv import _kernels


@contextmanager
def using(name: str) -> Iterator[None]:
    """Run the block with ``KLDIV_KERNELS=name`` (resolved afresh), then restore it."""
    saved = os.environ.get(_kernels.KERNELS_ENV)
    os.environ[_kernels.KERNELS_ENV] = name
    _kernels.reset()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_kernels.KERNELS_ENV, None)
        else:
            os.environ[_kernels.KERNELS_ENV] = saved
        _kernels.reset()
