"""The fidelity scripts (benchmarks/fidelity/) end in `fidelity: PASS` against the releases, so a change that breaks
fidelity fails CI. They run the releases through ../shared/reference/harness and skip where it (or einops) is absent,
with a reason that `pytest -rs` (`make test`) prints: fidelity was then not checked."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
# one entry per release: the script (a module of benchmarks.fidelity) and the arguments of its brief run (well under
# a minute on one thread)
SCRIPTS = [
    ["fidelity_allspark", "--quick", "--threads", "1"],
    ["fidelity_v2_training", "--steps", "4", "--threads", "1"],
    ["fidelity_unimatch_v2", "--quick", "--crops", "98", "126", "--train-steps", "2", "--threads", "1"],
]


def run_script(argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", f"benchmarks.fidelity.{argv[0]}", *argv[1:]], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.skipif(not (REFERENCE / "harness").is_dir(),
                    reason=f"needs ../shared/reference/harness ({REFERENCE / 'harness'} is absent): fidelity to the "
                           "releases NOT checked")
@pytest.mark.skipif(importlib.util.find_spec("einops") is None,
                    reason="needs einops (the releases import it; pip install -e '.[dev]'): fidelity NOT checked")
@pytest.mark.parametrize("argv", SCRIPTS, ids=[argv[0] for argv in SCRIPTS])
def test_fidelity_script_passes(argv):
    done = run_script(argv)
    lines = done.stdout.strip().splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert done.returncode == 0, f"{argv[0]} exit {done.returncode}: {failed or done.stderr[-2000:]}"
    assert lines[-1] == "fidelity: PASS"
    assert not failed and sum(line.startswith("PASS") for line in lines) >= 10


@pytest.mark.parametrize("argv", SCRIPTS, ids=[argv[0] for argv in SCRIPTS])
def test_fidelity_script_without_harness_says_so_in_one_line(argv, tmp_path):
    done = run_script([*argv, "--reference", str(tmp_path)], timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and str(tmp_path / "harness") in done.stderr
