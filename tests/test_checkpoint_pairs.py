"""The `latest` pair: a kill between its two writes resumes from the previous complete pair, exactly; a full disk
stops the run in one line naming the file and the free space (train.log too) and keeps the previous pair."""
import pytest
import safetensors.torch

from allspark.cli import main
from allspark.engine.loop import train
from allspark.errors import DiskFullError
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
    assert not (torn / "checkpoints" / "previous.safetensors").exists()


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
