"""One rule for child seeds: derive_seed(*parts) never gives two (seed, rank) or (seed, stream, epoch) tuples the
same stream, as the sums it replaces did (seed 1 rank 0 = seed 0 rank 1)."""
from allspark.distributed import derive_seed, derive_seeds


def test_child_seeds_do_not_collide_across_seeds_and_ranks():
    grid = {(seed, rank): derive_seed(seed, rank) for seed in range(20) for rank in range(16)}
    assert len(set(grid.values())) == len(grid)
    assert derive_seed(1, 0) != derive_seed(0, 1)
    assert derive_seed(3, 2, 5) == derive_seed(3, 2, 5)  # reproducible


def test_many_seeds_begin_with_the_single_one():
    assert int(derive_seeds(4, 7, 1)[0]) == derive_seed(7, 1)
    assert len(set(derive_seeds(1000, 7, 1).tolist())) == 1000
