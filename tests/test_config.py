"""Config loading: every shipped preset loads; every bad key or value is reported by name."""
from pathlib import Path

import pytest
import yaml

from allspark.config.loading import load_config, model_config_from_dict
from allspark.errors import ConfigError
from allspark.presets import find_preset, list_presets
from allspark.runs.run_config import check_run_dir, config_diff, write_run_config

PUBLISHED = {  # METHODS.md 2 table: crop, batch, epochs, lr, lr_multi, labeled loss, eval mode
    "pascal": (513, 2, 80, 0.001, 10.0, "ce", "whole", 21),
    "cityscapes": (801, 2, 240, 0.005, 1.0, "ohem", "sliding", 19),
    "coco": (513, 4, 10, 0.001, 10.0, "ce", "whole", 81),
}


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads(name):
    cfg = load_config(name)
    assert (cfg.method == "allspark") == (cfg.model.ablation != "none")
    dataset = name.split("/")[0]
    if dataset in PUBLISHED and not name.endswith("base"):
        crop, batch, epochs, lr, lr_multi, loss, mode, classes = PUBLISHED[dataset]
        t = cfg.train
        assert (cfg.model.crop_size, t.batch_size, t.epochs, t.lr, t.lr_multi, t.labeled_loss, cfg.eval.mode,
                cfg.model.num_classes) == (crop, batch, epochs, lr, lr_multi, loss, mode, classes)
        assert cfg.model.encoder == "mit_b5"
        assert cfg.data.labeled_list.endswith("labeled.txt")
        assert bool(cfg.data.unlabeled_list) == (cfg.method != "sup")
        assert cfg.method in cfg.run_dir


def test_protocol_coverage():
    names = set(list_presets())
    protocols = {"pascal/original": ["92", "183", "366", "732", "1464"],
                 "pascal/augmented": ["1_16", "1_8", "1_4", "1_2"], "pascal/u2pl": ["1_16", "1_8", "1_4", "1_2"],
                 "cityscapes": ["1_16", "1_8", "1_4", "1_2"], "coco": ["1_512", "1_256", "1_128", "1_64"]}
    for prefix, splits in protocols.items():
        for split in splits:
            for method in ("sup", "semi", "allspark"):
                assert f"{prefix}/{split}/{method}" in names
    for extra in ("demo", "camvid/sup", "camvid/semi", "camvid/allspark"):
        assert extra in names


def test_generated_protocol_preset_reads_its_row_of_the_table():
    cfg = load_config("pascal/u2pl/1_4/recipe")
    assert (cfg.data.labeled_list, cfg.data.unlabeled_list) == ("splits/pascal_u2pl/1_4/labeled.txt",
                                                                "splits/pascal_u2pl/1_4/unlabeled.txt")
    assert (cfg.recipe.threshold, cfg.recipe.teacher, cfg.run_dir) == (0.95, "ema", "runs/pascal/u2pl/1_4/allspark_recipe")
    with pytest.raises(ConfigError, match="did you mean pascal/u2pl/1_4/recipe"):
        load_config("pascal/u2pl/1_4/recipes")


# UniMatch V2's configs/*.yaml: classes, crop, epochs, batch per GPU, labeled loss, eval mode; and its splits
V2_PUBLISHED = {
    "pascal": ((21, 518, 60, 4, "ce", "whole"), ("92", "183", "366", "732", "1464")),
    "cityscapes": ((19, 798, 180, 2, "ohem", "sliding"), ("1_16", "1_8", "1_4", "1_2")),
    "coco": ((81, 518, 20, 4, "ce", "whole"), ("1_512", "1_256", "1_128", "1_64", "1_32")),
    "ade20k": ((150, 518, 60, 2, "ce", "whole"), ("1_64", "1_32", "1_16", "1_8")),
}
# the masks its README's downloads hold, read as they are: ADE20K's are prepared (0-149, 255 ignore), not raw
V2_LAYOUTS = {"pascal": "pascal", "cityscapes": "cityscapes", "coco": "coco", "ade20k": "ade20k_prepared"}


@pytest.mark.parametrize("dataset", V2_PUBLISHED)
def test_unimatch_v2_presets_carry_the_releases_settings(dataset):
    settings, splits = V2_PUBLISHED[dataset]
    names = set(list_presets())
    for split in splits:
        for size in ("small", "base"):
            for method, ours, ablation in (("sup", "sup", "none"), ("unimatch_v2", "semi", "none"),
                                           ("allspark", "allspark", "full")):
                name = f"unimatch_v2/{dataset}/{split}/{size}/{method}"
                assert name in names
                cfg = load_config(name)
                m, t = cfg.model, cfg.train
                assert (m.num_classes, m.crop_size, t.epochs, t.batch_size, t.labeled_loss, cfg.eval.mode) == settings
                assert (m.encoder, m.head, m.pretrained, m.ablation) == (f"dinov2_{size}", "dpt",
                                                                         f"facebook/dinov2-{size}", ablation)
                assert (cfg.method, t.optimizer, t.lr, t.lr_multi, t.lr_timing) == (ours, "adamw", 5e-6, 40.0, "after")
                assert cfg.recipe.comp_drop == (ours != "sup") and cfg.eval.miou_over == "all"
                assert cfg.data.labeled_list == f"splits/{dataset}/{split}/labeled.txt"
                assert cfg.data.layout == V2_LAYOUTS[dataset]


def test_warmup_published():
    assert load_config("pascal/augmented/1_8/allspark").train.warmup_epochs == 5
    assert load_config("cityscapes/1_8/allspark").train.warmup_epochs == 15


def test_overrides_and_ablation_switch():
    cfg = load_config("pascal/augmented/1_8/allspark", ["model.ablation=cca", "train.lr=0.01", "data.root=/x"])
    assert (cfg.model.ablation, cfg.train.lr, cfg.data.root) == ("cca", 0.01, "/x")


def test_the_method_sets_the_ablation_unless_a_row_is_chosen():
    """The method says whether the module exists; model.ablation picks the Table 5 row of AllSpark."""
    assert [load_config("demo", [f"method={m}"]).model.ablation for m in ("sup", "semi", "allspark")] == [
        "none", "none", "full"]
    assert load_config("demo", ["model.ablation=cca_mem"]).model.ablation == "cca_mem"
    assert load_config("camvid/semi", ["method=allspark"]).model.ablation == "full"
    with pytest.raises(ConfigError, match="'model.ablation' must be 'none' for method 'semi'"):
        load_config("demo", ["method=semi", "model.ablation=cca"])


def test_a_model_config_is_validated_without_a_method():
    assert model_config_from_dict({"ablation": "none", "crop_size": 64}).ablation == "none"
    assert model_config_from_dict({"ablation": "cca"}).ablation == "cca"
    with pytest.raises(ConfigError, match="'model.ablation' must be one of"):
        model_config_from_dict({"ablation": "plain"})
    with pytest.raises(ConfigError, match="'model.crop_size' must be at least 32"):
        model_config_from_dict({"crop_size": 0})


@pytest.mark.parametrize("override, key", [
    ("train.lrr=0.1", "train.lrr"),                 # unknown key
    ("nosection.x=1", "nosection"),                  # unknown section
    ("train.epochs=ten", "train.epochs"),            # wrong type
    ("train.batch_size=1.5", "train.batch_size"),     # wrong type
    ("train.ohem_min_kept=2.5e0", "train.ohem_min_kept"),  # scientific notation, not a whole number
    ("model.encoder=resnet50", "model.encoder"),      # bad choice
    ("eval.mode=tiles", "eval.mode"),                 # bad choice
    ("train.epochs=0", "train.epochs"),               # out of range
    ("model.ablation=none", "model.ablation"),        # cross-field rule: the demo's method is allspark
])
def test_bad_override_names_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config("demo", [override])


@pytest.mark.parametrize("text, key", [
    ("train:\n  epocs: 3\n", "train.epocs"),
    ("model:\n  crop_size: big\n", "model.crop_size"),
    ("train:\n  amp: fp8\n", "train.amp"),
    ("data: 3\n", "data"),
])
def test_bad_yaml_names_key_and_file(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert key in str(err.value) and str(path) in str(err.value)


def test_yaml_base_merges(tmp_path):
    (tmp_path / "parent.yaml").write_text("train:\n  lr: 0.02\n  epochs: 7\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ntrain:\n  epochs: 3\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.lr, cfg.train.epochs) == (0.02, 3)


def test_run_dir_refuses_other_config(tmp_path):
    """Only a run with a checkpoint to continue from refuses a config that changes the result."""
    cfg = load_config("demo", [f"run_dir={tmp_path / 'run'}", f"data.root={tmp_path}"])
    write_run_config(cfg)
    other = load_config("demo", [f"run_dir={tmp_path / 'run'}", f"data.root={tmp_path}", "train.lr=0.5"])
    assert config_diff(cfg, other) == [f"train.lr: {cfg.train.lr!r} -> 0.5"]
    assert check_run_dir(other) == [f"train.lr: {cfg.train.lr!r} -> 0.5"]  # no checkpoint yet: accepted
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "latest.state.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="train.lr"):
        check_run_dir(other)
    check_run_dir(other, force_config=True)
    write_run_config(other, iteration=7)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["lr"] == 0.5
    assert yaml.safe_load((tmp_path / "run" / "config.7.yaml").read_text())["train"]["lr"] == cfg.train.lr


def test_yaml_off_and_yes_stay_strings(tmp_path):
    """YAML 1.1 reads `off` as False; the config keeps YAML 1.2 booleans so `train.amp: off` is valid."""
    path = tmp_path / "c.yaml"
    path.write_text("method: sup\nmodel: {ablation: none}\ntrain: {amp: off, compile: true}\n")
    cfg = load_config(path, ["train.amp=off"])
    assert cfg.train.amp == "off" and cfg.train.compile is True
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(path, ["train.compile=yes"])


def test_scientific_notation_is_a_number_on_the_command_line_and_in_files(tmp_path):
    """YAML 1.1 reads 1e-3 (no dot before the exponent) as a string; float keys take it as people write it."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-4\n")
    cfg = load_config(path, ["train.lr_multi=1e1", "train.ohem_min_kept=2e5", "train.max_iters=1e6"])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.lr_multi) == (1e-3, 5e-4, 10.0)
    assert (cfg.train.ohem_min_kept, cfg.train.max_iters) == (200000, 1000000)
    assert isinstance(cfg.train.max_iters, int)
    with pytest.raises(ConfigError, match="train.lr"):
        load_config("demo", ["train.lr=-1e-3"])  # parsed, then the range check names it


def test_a_preset_typo_suggests_the_closest_names():
    with pytest.raises(ConfigError) as err:
        load_config("camvid/allspak")
    assert "did you mean camvid/allspark" in str(err.value) and "pascal/" not in str(err.value)


def test_base_may_name_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: camvid/allspark\ntrain:\n  max_iters: 50\n")
    cfg, preset = load_config(path), load_config("camvid/allspark")
    assert cfg.train.max_iters == 50 and cfg.model == preset.model and cfg.train.lr == preset.train.lr


def test_sup_takes_no_unlabeled_list():
    assert load_config("camvid/sup", ["data.unlabeled_list=null"]).data.unlabeled_list is None


def test_a_built_in_layout_and_num_classes_must_agree(tmp_path):
    from allspark.data.checks import class_count_problem

    assert class_count_problem("camvid", tmp_path, 11) is None
    assert "layout 'camvid' has 11 classes but model.num_classes is 12" in class_count_problem("camvid", tmp_path, 12)


def test_presets_are_found_by_the_names_they_are_listed_under():
    names = list_presets()
    assert {"demo", "camvid/allspark", "pascal/base", "pascal/original/183/allspark"} <= set(names)
    assert all(find_preset(name) is not None for name in names)
    assert isinstance(find_preset("demo"), Path) and isinstance(find_preset("pascal/original/183/allspark"), dict)
    assert find_preset("protocols.py") is None and find_preset("no/such/preset") is None
