"""The C++ product kernels (`csrc/products.cpp`), built on first use through torch's extension tooling.

`native()` returns the loaded extension, or None where it cannot be built (no C++ compiler, a torch without its
headers, `KIMI_K2_NATIVE=0`): every caller then takes the pure-torch path of `reference.py`, which computes the
same products (tests check the two agree). The build is cached by torch under `TORCH_EXTENSIONS_DIR` (default
`~/.cache/torch_extensions`), keyed on the source, so it runs once per machine (about a minute on 2 cores) and
is shared by every process. It compiles for the host CPU (`-march=native`): AVX2 + FMA + F16C kernels where the
CPU has them, a scalar build of the same arithmetic elsewhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

log = logging.getLogger("kimi_k2")

SOURCE = Path(__file__).resolve().parent / "csrc" / "products.cpp"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17"]  # -fopenmp: at::parallel_for is an OpenMP pragma


def _ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH; the `ninja` wheel puts it beside this Python."""
    here = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and (Path(here) / "ninja").exists():
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")


@cache
def native() -> ModuleType | None:
    """The compiled kernels, or None (the reason is logged once on the `kimi_k2` logger)."""
    if os.environ.get("KIMI_K2_NATIVE", "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load

        _ninja_on_path()
        return load(name="kimi_k2_products", sources=[str(SOURCE)], extra_cflags=FLAGS, verbose=False)
    except Exception as exc:  # any build failure means: use the reference path
        log.warning("kimi_k2: native kernels unavailable, using the pure-torch path (%s)", str(exc).splitlines()[0][:200])
        return None
