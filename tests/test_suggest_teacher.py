"""load_teacher: which model `allspark suggest` scores with, the EMA teacher of a run's `latest` included."""
import shutil

import pytest
import torch

from allspark.models.weights import load_model
from allspark.run_folder import RunFolder
from allspark.suggest.teacher import load_teacher
from inference_helpers import tiny_checkpoint


@pytest.fixture
def run_latest(tmp_path):
    """(a run whose latest weights are a tiny model, that model as loaded, an EMA teacher of its parameters)."""
    folder = RunFolder(tmp_path / "run")
    folder.weights("latest").parent.mkdir(parents=True)
    shutil.copy(tiny_checkpoint(tmp_path / "loose"), folder.weights("latest"))
    student, _ = load_model(folder.weights("latest"))
    ema = {name: param.detach() + 1 for name, param in student.named_parameters()}
    return folder, student, ema


def test_latest_with_an_ema_teacher_gives_the_teacher(run_latest):
    folder, student, ema = run_latest
    torch.save({"ema": ema, "iteration": 3}, folder.state("latest"))
    model, _, weights, what = load_teacher(folder.root, "latest")
    assert (weights, what) == (folder.weights("latest"), "the EMA teacher")
    state, before = model.state_dict(), student.state_dict()
    assert all(torch.equal(state[name], value) for name, value in ema.items())
    buffers = [name for name in before if name not in ema]  # the memory and norms stay the student's
    assert buffers and all(torch.equal(state[name], before[name]) for name in buffers)


@pytest.mark.parametrize("state", [{"iteration": 3}, None])  # a state without a teacher; no state at all
def test_latest_without_a_teacher_gives_the_student(run_latest, state):
    folder, student, _ = run_latest
    if state is not None:
        torch.save(state, folder.state("latest"))
    model, _, _, what = load_teacher(folder.weights("latest"), "latest")
    assert what == "the student"
    assert all(torch.equal(value, student.state_dict()[name]) for name, value in model.state_dict().items())
