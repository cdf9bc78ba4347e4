"""The run folder's files (allspark.runs): the one atomic write, which every writer of the package goes through,
and the checkpoint pairs: the last two complete ones kept, the EMA teacher's weights read from the newest that
loads, as resume chooses it."""
import pytest
import torch

from allspark.config.loading import load_config
from allspark.data.splits import add_to_labeled, make_split
from allspark.errors import CheckpointError
from allspark.runs import atomic as atomic_module
from allspark.runs.atomic import atomic_write, atomic_write_text
from allspark.runs.checkpoints import ema_weights, load_checkpoint, newest_pair, save_checkpoint
from allspark.runs.folder import RunFolder
from allspark.runs.weights_file import save_weights


def test_a_writer_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def half_then_fail(tmp):
        with open(tmp, "w") as handle:
            handle.write("ha")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["file.txt"]
    atomic_write_text(tmp_path / "new" / "file.txt", "new\n")  # its folder is made
    assert (tmp_path / "new" / "file.txt").read_text() == "new\n"


def test_the_split_lists_are_replaced_through_the_atomic_write(tmp_path, monkeypatch):
    """make_split and add_to_labeled write through runs.atomic, so a kill mid-write leaves the lists as they were."""
    root = tmp_path / "data"
    (root / "masks").mkdir(parents=True)
    lines = [f"img{i}.png masks/m{i}.png" for i in range(4)]
    for i in range(4):
        (root / "masks" / f"m{i}.png").write_bytes(b"")
    (root / "train.txt").write_text("".join(f"{line}\n" for line in lines))
    splits = root / "splits"
    written = []
    real = atomic_module.atomic_write

    def recorded(path, write):
        written.append(path.name)
        real(path, write)

    monkeypatch.setattr(atomic_module, "atomic_write", recorded)
    make_split(root / "train.txt", splits, count=2, seed=0)
    assert written == ["labeled.txt", "unlabeled.txt"]
    before = {name: (splits / name).read_text() for name in written}
    suggested = tmp_path / "suggested.txt"
    suggested.write_text((splits / "unlabeled.txt").read_text().splitlines()[0] + "\n")

    def killed(path, write):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_module, "atomic_write", killed)
    with pytest.raises(KeyboardInterrupt):
        add_to_labeled(suggested, splits, root)
    assert {name: (splits / name).read_text() for name in written} == before
    assert sorted(p.name for p in splits.iterdir()) == ["labeled.txt", "unlabeled.txt"]


def _save(run, cfg, iteration, ema):
    state = {"iteration": iteration, **({"ema": ema} if ema is not None else {})}
    save_checkpoint(run, {"weight": torch.full((2,), float(iteration))}, cfg, state)


def test_the_ema_weights_come_from_the_newest_complete_pair(tmp_path):
    run = tmp_path / "run"
    cfg = load_config("demo", [f"run_dir={run}"])
    assert ema_weights(run) is None and newest_pair(run) is None  # no checkpoint yet
    _save(run, cfg, 3, {"weight": torch.full((2,), 30.0)})
    _save(run, cfg, 6, {"weight": torch.full((2,), 60.0)})
    folder = RunFolder(run)
    weights, ema = ema_weights(run)
    assert weights == folder.weights() and torch.equal(ema["weight"], torch.full((2,), 60.0))
    # a run killed between the two writes of iteration 9 (latest became previous): previous is the newest that loads
    for name in ("weights", "state"):
        getattr(folder, name)("previous").unlink()
        getattr(folder, name)("previous").hardlink_to(getattr(folder, name)())
    save_weights(folder.weights(), {"weight": torch.full((2,), 9.0)}, cfg, extra={"iteration": "9"})
    weights, ema = ema_weights(run)
    assert weights == folder.weights("previous") and torch.equal(ema["weight"], torch.full((2,), 60.0))
    pair = newest_pair(run)
    assert (pair.name, pair.weights, pair.state["iteration"]) == ("previous", folder.weights("previous"), 6)
    assert pair.skipped == "latest: latest.safetensors is of iteration 9, latest.state.pt of 6 (a save cut short)"
    assert load_checkpoint(run)[1]["iteration"] == 6  # resume picks the same pair


def test_the_ema_weights_pass_over_a_latest_state_cut_short(tmp_path):
    run = tmp_path / "run"
    cfg = load_config("demo", [f"run_dir={run}"])
    for iteration in (3, 6, 9):
        _save(run, cfg, iteration, {"weight": torch.full((2,), 10.0 * iteration)})
    folder = RunFolder(run)
    assert not folder.state().samefile(folder.state("previous"))  # two complete pairs: 9 and 6
    with open(folder.state(), "r+b") as handle:
        handle.truncate(folder.state().stat().st_size // 2)
    weights, ema = ema_weights(run)
    assert weights == folder.weights("previous") and torch.equal(ema["weight"], torch.full((2,), 60.0))
    _save(run, cfg, 12, None)  # the pair that does not load is replaced; the one that loads stays
    assert newest_pair(run).state["iteration"] == 12 and torch.load(folder.state("previous"), weights_only=True)["iteration"] == 6


def test_ema_weights_is_none_without_a_teacher_and_refuses_a_torn_run(tmp_path):
    run = tmp_path / "run"
    cfg = load_config("demo", [f"run_dir={run}"])
    _save(run, cfg, 3, None)
    assert ema_weights(run) is None
    torch.save({"iteration": 4, "ema": {"weight": torch.zeros(2)}}, RunFolder(run).state())
    with pytest.raises(CheckpointError, match="no checkpoint pair to resume from \\(latest: latest.safetensors is of "
                                              "iteration 3, latest.state.pt of 4 .*previous.safetensors is missing"):
        ema_weights(run)
