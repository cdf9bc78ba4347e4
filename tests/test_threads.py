"""The default thread count leaves the busy cores to the jobs that hold them."""
import os

import pytest

from allspark.threads import busy_cores, default_threads


@pytest.mark.parametrize("cores, busy, ranks, expected", [
    (2, 0.1, 1, 2),  # an idle machine: every core
    (2, 1.0, 1, 1),  # one core held by another job
    (2, 2.6, 1, 1),  # more load than cores: still one thread
    (16, 4.4, 2, 6),  # two ranks share the 12 free cores
    (4, 0.0, 8, 1),  # more ranks than cores
])
def test_default_threads_leaves_the_busy_cores(cores, busy, ranks, expected):
    assert default_threads(cores, busy, ranks) == expected


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="measured from /proc/stat on Linux only")
def test_busy_cores_is_a_count_of_cores():
    assert 0.0 <= busy_cores(0.05) <= os.cpu_count()
