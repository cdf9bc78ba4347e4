"""`load_teacher` (the model `allspark suggest` scores with): a run's `latest` whose training state holds an EMA
teacher gives the teacher's averaged tensors (the memory stays the student's); otherwise the student's weights."""
import pytest
import torch

from allspark.config.loading import config_from_dict
from allspark.engine.recipes import EmaTeacher
from allspark.models import build_model
from allspark.runs.folder import RunFolder
from allspark.runs.weights_file import save_weights
from allspark.suggest.teacher import load_teacher

MEMORY = "allspark.memory.queue"


def _cfg(best_of="student"):
    return config_from_dict({"method": "allspark", "model": {"encoder": "mit_b0", "num_classes": 3, "crop_size": 64},
                             "recipe": {"teacher": "ema"}, "train": {"best_of": best_of}})


def _model(seed):
    torch.manual_seed(seed)
    return build_model(_cfg())


@pytest.fixture(scope="module")
def student_and_ema():
    """(student state, EMA tensors): the EMA teacher right after its first update from another model, which makes
    its averaged tensors exactly that model's (momentum min(m, 0 / 1) = 0)."""
    student = _model(0)
    teacher = EmaTeacher(student, momentum=0.99)
    teacher.update(_model(1), iteration=0)
    return student.state_dict(), teacher.state_dict()


def _run(root, student_state, ema=None, best_of="student", best=False):
    """A run folder as training leaves it: checkpoints/latest.safetensors + latest.state.pt (+ best.safetensors)."""
    run = RunFolder(root)
    run.weights().parent.mkdir(parents=True)
    save_weights(run.weights("latest"), student_state, _cfg(best_of), extra={"iteration": "8"})  # a complete pair
    state = {"iteration": 8, "optimizer": {}}
    torch.save({**state, "ema": ema} if ema is not None else state, run.state("latest"))
    if best:
        save_weights(run.weights("best"), student_state, _cfg(best_of))
    return run


def _assert_holds(model, tensors):
    state = model.state_dict()
    for name, tensor in tensors.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)


def test_the_fixture_teacher_differs_from_the_student(student_and_ema):
    student, ema = student_and_ema
    assert MEMORY in student and MEMORY not in ema  # the memory is not averaged
    matrices = [name for name, tensor in ema.items() if tensor.ndim >= 2]  # biases and norms start equal
    assert len(matrices) > 50 and all(not torch.equal(student[name], ema[name]) for name in matrices)


@pytest.mark.parametrize("which", ["latest", "best"])  # a run without best.safetensors falls back to latest
def test_latest_with_an_ema_state_gives_the_teacher(tmp_path, student_and_ema, which):
    student, ema = student_and_ema
    run = _run(tmp_path / "run", student, ema)
    model, cfg, weights, what = load_teacher(run.root, which)
    assert what == "the EMA teacher" and weights == run.weights("latest") and not model.training
    _assert_holds(model, ema)
    torch.testing.assert_close(model.state_dict()[MEMORY], student[MEMORY], rtol=0, atol=0)
    assert cfg.model.num_classes == 3


def test_latest_without_ema_gives_the_student(tmp_path, student_and_ema):
    student, _ = student_and_ema
    run = _run(tmp_path / "run", student)
    model, _, weights, what = load_teacher(run.weights("latest"), "latest")
    assert what == "the student" and weights == run.weights("latest")
    _assert_holds(model, student)


def test_best_is_taken_as_written_and_named_by_best_of(tmp_path, student_and_ema):
    student, ema = student_and_ema
    for best_of, named in (("student", "the student"), ("ema", "the EMA teacher")):
        run = _run(tmp_path / best_of, student, ema, best_of=best_of, best=True)
        model, _, weights, what = load_teacher(run.root, "best")
        assert weights == run.weights("best") and what == named
        _assert_holds(model, student)  # best.safetensors already holds whichever model it followed


def test_a_loose_weights_file_is_the_student(tmp_path, student_and_ema):
    student, ema = student_and_ema
    run = _run(tmp_path / "run", student, ema)
    loose = tmp_path / "latest.safetensors"
    loose.write_bytes(run.weights("latest").read_bytes())  # no run folder around it: no training state to read
    model, _, weights, what = load_teacher(loose)
    assert what == "the student" and weights == loose
    _assert_holds(model, student)
