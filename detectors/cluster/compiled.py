"""Whether numba may cache the clustering kernels it compiles on disk."""

from __future__ import annotations

import os

# numba caches compiled code beside a real source file; imported from a zip (--py-files) it compiles in memory.
# Every kernel module sits in this folder, so this module's file stands for theirs.
CACHE_COMPILED = os.path.isfile(__file__)
