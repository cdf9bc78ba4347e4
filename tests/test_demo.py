"""The demo (`allspark demo`): every row's budget, start and seeds, its folders, and its silence as a library."""
from pathlib import Path

import pytest
import torch

from allspark import demo
from allspark.config.loading import load_config
from allspark.config.schema import Config
from allspark.errors import UsageError
from allspark.models import build_model
from allspark.runs.weights_file import read_weights


@pytest.mark.parametrize("iters", [None, 700])
def test_demo_gives_every_run_the_same_budget(tmp_path, iters):
    base = load_config("demo")
    budgets = {}
    for run, (preset, _) in demo.DEMO_RUNS.items():
        cfg: Config = load_config(preset, demo.demo_overrides(run, tmp_path, tmp_path / "data", iters))
        assert cfg.run_dir == str(tmp_path / run)
        labeled = demo.NUM_LABELED if run == "sup" else demo.NUM_TRAIN - demo.NUM_LABELED
        per_epoch = labeled // base.train.batch_size
        assert cfg.train.epochs * per_epoch >= cfg.train.max_iters  # the epochs never cut the budget short
        budgets[run] = cfg.train.max_iters
    assert len(set(budgets.values())) == 1 and budgets["sup"] == (iters or budgets["sup"])


def test_demo_runs_are_labels_alone_the_papers_loop_and_the_recipe(tmp_path):
    cfgs = {run: load_config(preset, demo.demo_overrides(run, tmp_path, tmp_path / "data", 10))
            for run, (preset, _) in demo.DEMO_RUNS.items()}
    assert cfgs["sup"].method == "sup" and cfgs["allspark"].method == cfgs["allspark_recipe"].method == "allspark"
    assert cfgs["allspark"].recipe == load_config("demo").recipe  # the paper's loop
    assert cfgs["allspark_recipe"].recipe.teacher == "ema" and cfgs["allspark_recipe"].recipe.threshold > 0


def test_demo_rows_start_from_the_source_encoder(tmp_path, monkeypatch):
    """The demo's encoder: SupBaseline on the generated source set (its own classes), found finished the second
    time; every row's model.pretrained is that file, and its encoder loads into the 4-class demo model."""
    monkeypatch.setattr(demo, "SOURCE_TRAIN", 8)
    monkeypatch.setattr(demo, "SOURCE_VAL", 2)
    extra = ("model.crop_size=32", "train.batch_size=2")
    weights = demo.pretrain_source_encoder(tmp_path, iters=2, extra=extra, progress=False)
    assert (tmp_path / "source_data" / "train.txt").read_text().count("\n") == 8
    trained = weights.stat().st_mtime_ns
    assert demo.pretrain_source_encoder(tmp_path, iters=2, extra=extra, progress=False) == weights
    assert weights.stat().st_mtime_ns == trained  # finished: not trained again
    for run, (preset, _) in demo.DEMO_RUNS.items():
        assert load_config(preset, demo.demo_overrides(run, tmp_path, tmp_path, 10, weights)).model.pretrained == str(weights)
    source_state, _ = read_weights(weights)
    model = build_model(load_config("demo", [f"model.pretrained={weights}"]).model)
    encoder_keys = [k for k in model.state_dict() if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(model.state_dict()[k], source_state[k]) for k in encoder_keys)
    assert model.head.classifier.out_channels == 4 != source_state["head.classifier.weight"].shape[0]


def test_demo_seed_sets_every_rows_training_seed(tmp_path):
    for run, (preset, _) in demo.DEMO_RUNS.items():
        assert load_config(preset, demo.demo_overrides(run, tmp_path, tmp_path, 10, seed=7)).train.seed == 7


def test_demo_folders_carry_the_seeds_so_no_seed_reuses_anothers():
    assert demo.default_folders(0, 0) == (Path("runs/demo"), Path("demo_data"))
    pairs = [(seed, data_seed) for seed in (0, 1, 2) for data_seed in (0, 1, 2)]
    outs = {demo.default_folders(*pair)[0] for pair in pairs}
    datas = {demo.default_folders(*pair)[1] for pair in pairs}
    assert len(outs) == len(pairs) and len(datas) == 3


def test_demo_data_seed_generates_another_set_and_refuses_a_mismatched_folder(tmp_path):
    small = dict(num_train=2, num_val=1, num_classes=3)
    demo._generate_unless_there(tmp_path / "a", "a set", 0, progress=False, **small)
    demo._generate_unless_there(tmp_path / "b", "a set", 5, progress=False, **small)
    first = (tmp_path / "a" / "images" / "train_00000.jpg").read_bytes()
    assert first != (tmp_path / "b" / "images" / "train_00000.jpg").read_bytes()
    demo._generate_unless_there(tmp_path / "b", "a set", 5, progress=False, **small)  # the same seed: reused
    with pytest.raises(UsageError, match=f"{tmp_path / 'b'}.*seed 5, not 0"):
        demo._generate_unless_there(tmp_path / "b", "a set", 0, progress=False, **small)
    (tmp_path / "a" / demo.SEED_FILE).unlink()  # a set made before the seed file: seed 0
    demo._generate_unless_there(tmp_path / "a", "a set", 0, progress=False, **small)
    assert (tmp_path / "a" / "images" / "train_00000.jpg").read_bytes() == first


def test_demo_library_prints_nothing_and_says_through_the_callers_function(tmp_path, capsys):
    small = dict(num_train=2, num_val=1, num_classes=3)
    demo._generate_unless_there(tmp_path / "quiet", "a set", progress=False, **small)
    said = []
    demo._generate_unless_there(tmp_path / "told", "a set", progress=False, say=said.append, **small)
    assert capsys.readouterr().out == ""
    assert said == [f"generating a set in {tmp_path / 'told'} ..."]
