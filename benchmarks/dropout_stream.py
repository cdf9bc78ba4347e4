"""`allspark train` with another dropout stream: the run's seed plus 1000 is set after the model is built, so
the initial weights, the memory and the batches are those of the plain run and only the random draws of
dropout and drop-path differ. Measures how much of a quality difference one stream of dropout draws makes
(BENCHMARKS.md, the compile quality check).

    OMP_NUM_THREADS=1 python benchmarks/dropout_stream.py train demo run_dir=runs/stream_s0 train.seed=0 ...
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's allspark

import allspark.engine.loop as loop_module  # noqa: E402
from allspark.cli import main  # noqa: E402

STREAM_OFFSET = 1000
_seed_everything = loop_module.dist_utils.seed_everything


def _reseeded(seed, rank=None):
    """The trainer seeds once before building the model (rank None) and once after (with the rank)."""
    return _seed_everything(seed) if rank is None else _seed_everything(seed, rank + STREAM_OFFSET)


loop_module.dist_utils.seed_everything = _reseeded
sys.exit(main(sys.argv[1:]))
