"""vitrine's reference model in PyTorch: the numerical specification of the C engine."""
import os

# numpy's OpenBLAS worker threads spin (sched_yield) while torch's OpenMP threads compute; on a
# 2-core machine that halved training speed. numpy does no heavy linear algebra here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
