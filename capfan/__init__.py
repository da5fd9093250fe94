"""capfan: distributed packet capture with a zero-copy shared-memory fan-out ring."""

__version__ = "0.1.0"

import os as _os

# numpy's OpenBLAS threads busy-wait on idle cores; capture boxes pin cores, so keep BLAS to the
# calling thread unless the user asked otherwise.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
