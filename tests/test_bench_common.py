"""benchmarks/common.py's allocator switch: the bench re-runs itself with tcmalloc preloaded, or says how to get it."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import common  # benchmarks/ is not a package: imported by path

SCRIPT = """
import sys
sys.path.insert(0, {bench!r})
import common
print("before", common.malloc_in_use(), flush=True)
common.run_under_malloc("tcmalloc")
print("after", common.malloc_in_use())
"""


def test_run_under_malloc_reexecutes_with_tcmalloc_or_names_the_package(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(SCRIPT.format(bench=str(REPO_ROOT / "benchmarks")))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert "before glibc" in run.stdout  # the test process itself runs under glibc's malloc
    if any(Path(p).exists() for p in common.TCMALLOC_PATHS):
        assert run.returncode == 0, run.stderr
        assert "after tcmalloc" in run.stdout  # the same script, re-executed with the library preloaded
    else:
        assert run.returncode != 0
        assert "apt install libtcmalloc-minimal4" in run.stderr and "after" not in run.stdout


def test_glibc_is_left_as_it_is_and_page_faults_are_counted():
    common.run_under_malloc("glibc")  # no re-execution: still this process
    faults, kernel_s = common.page_faults(lambda: bytearray(b"\x01") * (64 << 20))  # 64 MiB of fresh pages, written
    assert faults > 0 and kernel_s >= 0.0
