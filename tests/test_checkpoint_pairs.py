"""The checkpoint pairs: the last two complete ones are kept; a kill between the two writes of `latest`, or a
`latest` file cut short, resumes from the previous pair, exactly, saying so; a full disk stops the run in one line
naming the file and the free space (train.log too) and keeps the previous pair."""
import os
import shutil

import pytest
import safetensors.torch
import torch

from allspark.cli import main
from allspark.engine.loop import train
from allspark.errors import CheckpointError, ConfigError, DiskFullError
from allspark.runs import checkpoints as checkpoint_module
from allspark.runs import weights_file as weights_module
from allspark.runs.atomic import atomic_write
from allspark.runs.checkpoints import load_checkpoint
from allspark.runs.folder import RunFolder
from allspark.runs.metrics import read_metrics
from engine_helpers import make_cfg, make_train_data


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("synthetic"))


def _losses(run):
    return [(r["iter"], r["loss"], r["lr"]) for r in read_metrics(run) if r["split"] == "train"]


def _iterations(run, name):
    """The iterations pair `name` holds: its weights' stamp and its state's."""
    folder = RunFolder(run)
    return (int(weights_module.weights_metadata(folder.weights(name))["iteration"]),
            torch.load(folder.state(name), weights_only=True)["iteration"])


@pytest.fixture(autouse=True)
def one_thread():
    """Every run here on one thread, as `finished` was made: losses are compared bit for bit with it, and another
    test of the same worker process may have set another thread count meanwhile."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory):
    """A run of 8 iterations left alone (checkpoints at 3, 6 and 8), on one thread."""
    run = tmp_path_factory.mktemp("finished") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(make_cfg(data_root, run, "sup", "train.epochs=4"), progress=False)
    finally:
        torch.set_num_threads(before)
    return run


def _copy(finished, run):
    """The finished run's checkpoints and metrics in another run directory (its config.yaml names its own)."""
    shutil.copytree(finished / "checkpoints", run / "checkpoints")
    shutil.copyfile(finished / "metrics.jsonl", run / "metrics.jsonl")


def _truncate(path):
    """Cut a file to half its size, as a full network disk or a copy cut short leaves it."""
    os.truncate(path, path.stat().st_size // 2)


def test_the_last_two_complete_pairs_are_kept(finished):
    assert _iterations(finished, "latest") == (8, 8) and _iterations(finished, "previous") == (6, 6)
    folder = RunFolder(finished)
    assert not folder.weights().samefile(folder.weights("previous"))


@pytest.mark.parametrize("damaged", ["weights", "state"])
def test_a_latest_file_cut_short_resumes_from_the_previous_pair(data_root, finished, tmp_path, damaged):
    run = tmp_path / "run"
    _copy(finished, run)
    folder = RunFolder(run)
    _truncate(getattr(folder, damaged)())
    train(make_cfg(data_root, run, "sup", "train.epochs=4"), progress=False)
    assert _losses(run) == _losses(finished)  # continued from iteration 6 exactly as the run left alone
    name = getattr(folder, damaged)().name
    line = f"WARNING resuming {run} at iteration 6 (epoch 2, batch 2) from the previous pair (latest: {name} does not "
    resumed = [text for text in (run / "train.log").read_text().splitlines() if " resuming " in text]
    assert len(resumed) == 1 and f"{line}load (" in resumed[0] and resumed[0].endswith("); skipped)")
    # the damaged pair was overwritten, not kept over the pair that loaded
    assert _iterations(run, "latest") == (8, 8) and _iterations(run, "previous") == (6, 6)


def test_a_model_change_is_told_from_the_pair_that_loads(data_root, finished, tmp_path):
    run = tmp_path / "run"
    _copy(finished, run)
    _truncate(RunFolder(run).weights())
    with pytest.raises(ConfigError, match="does not fit this model \\(model.encoder: 'mit_b0' -> 'mit_b1'\\)"):
        train(make_cfg(data_root, run, "sup", "train.epochs=4", "model.encoder=mit_b1"), progress=False)


def test_no_pair_that_loads_names_the_files_and_keeps_best(finished, tmp_path):
    run = tmp_path / "run"
    _copy(finished, run)
    folder = RunFolder(run)
    _truncate(folder.state())
    _truncate(folder.weights("previous"))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(run)
    message = str(error.value)
    assert message.startswith(f"{run / 'checkpoints'}: no checkpoint pair to resume from (latest: latest.state.pt "
                              "does not load (")
    assert "previous: previous.safetensors does not load (" in message and "\n" not in message
    assert "delete" not in message and "best.safetensors here stays as it is" in message
    assert folder.weights("best").is_file()


def test_a_kill_between_the_two_writes_resumes_from_the_previous_pair(data_root, tmp_path, monkeypatch):
    whole, torn = tmp_path / "whole", tmp_path / "torn"
    train(make_cfg(data_root, whole, "sup", "train.epochs=4"), progress=False)  # saves at 3, 6 and the end, 8

    def killed_before_the_state(path, write):  # the weights of iteration 6 are written, then the run dies
        if path.name == "latest.state.pt" and checkpoint_module.save_weights.last_iteration == "6":
            raise KeyboardInterrupt
        atomic_write(path, write)

    def stamped(path, state_dict, cfg, extra=None):
        stamped.last_iteration = (extra or {}).get("iteration")
        weights_module.save_weights(path, state_dict, cfg, extra)

    monkeypatch.setattr(checkpoint_module, "atomic_write", killed_before_the_state)
    monkeypatch.setattr(checkpoint_module, "save_weights", stamped)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(data_root, torn, "sup", "train.epochs=4"), progress=False)
    names = sorted(path.name for path in (torn / "checkpoints").iterdir())
    assert names == ["best.safetensors", "latest.safetensors", "latest.state.pt", "previous.safetensors",
                     "previous.state.pt"]
    assert load_checkpoint(torn)[1]["iteration"] == 3  # latest.safetensors is at 6, its state file at 3
    monkeypatch.undo()
    train(make_cfg(data_root, torn, "sup", "train.epochs=4"), progress=False)
    assert _losses(torn) == _losses(whole)
    assert _iterations(torn, "previous") == (6, 6)  # the two last complete pairs stay


def test_a_full_disk_stops_in_one_line_and_keeps_the_previous_pair(data_root, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"

    def full_at_iteration_4(tensors, path, metadata=None):
        if metadata.get("iteration") == "4":
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device "
                                              "(os error 28)")
        save_file(tensors, path, metadata=metadata)

    save_file = safetensors.torch.save_file
    monkeypatch.setattr(weights_module, "save_file", full_at_iteration_4)
    with pytest.raises(SystemExit) as code:
        main(["train", "demo", "method=sup", f"data.root={data_root}", f"run_dir={run}", "model.crop_size=64",
              "train.batch_size=2", "train.epochs=3", "train.checkpoint_every=2", "--no-progress"])
    assert code.value.code == 1
    weights = RunFolder(run).weights()
    line = f"allspark train: error: {weights}: no space left on its device ("
    assert capsys.readouterr().err.splitlines()[-1].startswith(line)
    assert line.split("error: ")[1] in (run / "train.log").read_text().splitlines()[-1]
    assert load_checkpoint(run)[1]["iteration"] == 2  # the checkpoint before
    assert not list((run / "checkpoints").glob(".*"))  # no temporary file left behind


def test_disk_full_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "file.bin"
    target.write_text("old")

    def no_space(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(DiskFullError, match=r"file.bin: no space left on its device \([0-9.]+ MiB free in .*the "
                                            "previous file is kept"):
        atomic_write(target, no_space)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["file.bin"]
