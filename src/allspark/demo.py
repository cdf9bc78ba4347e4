"""`allspark demo`: synthetic data, a few labeled images; SupBaseline, AllSpark with the paper's loop and
AllSpark with the recommended recipe, on CPU in minutes.

Every row starts from the same encoder, first trained with labels on a separate synthetic source set whose
classes share no shape, hue or texture with the demo's (a small stand-in for the ImageNet-pretrained encoder
the paper starts from): from random weights, unlabeled images do not reliably pay (BENCHMARKS.md, "Recipe
study")."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

from allspark.config.loading import load_config
from allspark.data.splits import make_split
from allspark.data.synthetic import SOURCE_SHAPES, generate_synthetic
from allspark.engine.loop import train
from allspark.errors import UsageError
from allspark.runs.folder import RunFolder

NUM_TRAIN, NUM_VAL, IMAGE_SIZE, NUM_LABELED = 400, 80, 128, 6  # dataset of the demo preset
SOURCE_TRAIN, SOURCE_VAL, SOURCE_ITERS = 3000, 200, 1500  # the source set and the encoder's training budget
# the demo's rows: run name -> (preset, label); every row gets the same iteration budget
DEMO_RUNS = {"sup": ("demo", "SupBaseline"), "allspark": ("demo", "AllSpark, paper's loop"),
             "allspark_recipe": ("demo_recipe", "AllSpark + recipe")}
SEED_FILE = "data_seed.txt"  # the generation seed of a synthetic set, written before its images
Say = Callable[[str], None]  # where the demo's progress lines go (the command passes print; the library is silent)


def _silent(line: str) -> None:
    """The default `say`: library functions print nothing of their own."""


def default_folders(seed: int, data_seed: int) -> tuple[Path, Path]:
    """(out, data) of a demo at training `seed` and generation `data_seed`: runs/demo and demo_data at 0 and 0,
    names carrying the seeds otherwise, so another seed never resumes or reuses a different one's files."""
    tag = (f"_seed{seed}" if seed else "") + (f"_data{data_seed}" if data_seed else "")
    return Path(f"runs/demo{tag}"), Path("demo_data" + (f"_seed{data_seed}" if data_seed else ""))


def _generate_unless_there(data: Path, what: str, seed: int = 0, progress: bool = True, say: Say = _silent,
                           **kwargs) -> None:
    """generate_synthetic(data, size=IMAGE_SIZE, seed=seed, **kwargs) unless a complete set (val.txt is written
    last) is already in `data`; a set generated with another seed is refused (one made before the seed file
    existed counts as seed 0)."""
    if (data / "val.txt").is_file():
        found = int((data / SEED_FILE).read_text()) if (data / SEED_FILE).is_file() else 0
        if found != seed:
            raise UsageError(f"{data} holds {what} generated with seed {found}, not {seed}: pass another folder")
        return
    say(f"generating {what} in {data} ...")
    data.mkdir(parents=True, exist_ok=True)
    (data / SEED_FILE).write_text(f"{seed}\n")
    generate_synthetic(data, size=IMAGE_SIZE, seed=seed, progress=progress, **kwargs)


def prepare_demo_data(data: Path, num_classes: int, seed: int = 0, say: Say = _silent) -> None:
    """Generate the synthetic set (generation `seed`) and its labeled/unlabeled split (the same seed) under
    `data` unless already there."""
    _generate_unless_there(data, "the synthetic dataset", seed, say=say, num_train=NUM_TRAIN, num_val=NUM_VAL,
                           num_classes=num_classes)
    if not (data / "splits" / "unlabeled.txt").is_file():
        make_split(data / "train.txt", data / "splits", count=NUM_LABELED, seed=seed)


def source_overrides(data: Path, run_dir: Path, iters: int, seed: int = 0) -> list[str]:
    """Overrides of the demo preset for SupBaseline on every image of the source set under `data` (its own
    classes), `iters` iterations; one epoch is a pass over the source images."""
    epochs = math.ceil(iters / (SOURCE_TRAIN // load_config("demo").train.batch_size))
    return [f"run_dir={run_dir}", f"data.root={data}", "data.labeled_list=train.txt", "data.unlabeled_list=",
            "method=sup", f"model.num_classes={len(SOURCE_SHAPES) + 1}", f"train.seed={seed}",
            f"train.max_iters={iters}", f"train.epochs={epochs}", "train.eval_every=1",
            f"train.checkpoint_every={iters}"]


def pretrain_source_encoder(out: Path, iters: int = SOURCE_ITERS, extra: tuple[str, ...] = (),
                            progress: bool = True, say: Say = _silent) -> Path:
    """Train (or resume, or find finished) SupBaseline on the source set, generated under out/source_data if
    missing, in out/source_encoder; returns its weights file, whose encoder `model.pretrained` loads."""
    data, run_dir = out / "source_data", out / "source_encoder"
    _generate_unless_there(data, "the source set (other shapes, hues and textures)", 0, progress, say,
                           num_train=SOURCE_TRAIN, num_val=SOURCE_VAL, num_classes=len(SOURCE_SHAPES) + 1,
                           classes="source")
    cfg = load_config("demo", [*source_overrides(data, run_dir, iters), *extra])
    say(f"\n== the encoder: SupBaseline on {SOURCE_TRAIN} labeled source images, {iters} iterations: {run_dir}")
    train(cfg, device="cpu", progress=progress)
    return RunFolder(run_dir).weights("latest")


def demo_overrides(run: str, out: Path, data: Path, iters: int | None, encoder: Path | None = None,
                   seed: int = 0) -> list[str]:
    """Overrides of the demo preset for the `run` of DEMO_RUNS at training `seed`, starting from the `encoder`
    weights if given:
    every run gets the same iteration budget and about the same number of evaluations, so the epochs (passes
    over the unlabeled list, or over the few labeled images for SupBaseline) are scaled to match."""
    base = load_config("demo")
    unlabeled_epoch = (NUM_TRAIN - NUM_LABELED) // base.train.batch_size
    total = iters or base.train.epochs * unlabeled_epoch
    per_epoch = NUM_LABELED // base.train.batch_size if run == "sup" else unlabeled_epoch
    epochs = math.ceil(total / per_epoch)
    evals = base.train.epochs // base.train.eval_every
    overrides = [f"run_dir={out / run}", f"data.root={data}", f"train.seed={seed}", f"train.max_iters={total}",
                 f"train.epochs={epochs}", f"train.eval_every={max(1, epochs // evals)}"]
    overrides += [f"model.pretrained={encoder}"] if encoder else []
    return overrides + (["method=sup"] if run == "sup" else [])  # model.ablation follows the method


def run_demo(out: Path = Path("runs/demo"), data: Path = Path("demo_data"), iters: int | None = None,
             seed: int = 0, data_seed: int = 0, say: Say = _silent) -> dict[str, dict]:
    """Train the runs of DEMO_RUNS at training `seed` on the demo set of generation `data_seed`, each row's
    header through `say`; returns {run: result} (format_demo_table prints it). The source encoder is the same
    at every seed: the rows' common start."""
    prepare_demo_data(data, load_config("demo").model.num_classes, data_seed, say)
    encoder = pretrain_source_encoder(out, say=say)
    results = {}
    for run, (preset, label) in DEMO_RUNS.items():
        cfg = load_config(preset, demo_overrides(run, out, data, iters, encoder, seed))
        say(f"\n== {label}: {cfg.run_dir}")
        started = time.time()
        result = train(cfg, device="cpu")
        results[run] = {**result, "seconds": time.time() - started, "run_dir": cfg.run_dir}
    return results


def format_demo_table(results: dict[str, dict]) -> str:
    """The mIoU table of the demo's runs, and one line saying what it shows."""
    lines = [f"{'run':<23} {'mIoU (%)':>9} {'best (%)':>9} {'iters':>6} {'time (s)':>9}  run directory"]
    for run, r in results.items():
        lines.append(f"{DEMO_RUNS[run][1]:<23} {r['miou'] * 100:9.2f} {r['best_miou'] * 100:9.2f} "
                     f"{r['iteration']:6d} {r['seconds']:9.1f}  {r['run_dir']}")
    lines.append("Same budget and start per row (6 labeled images; MiT-B0 pretrained on a separate synthetic set): "
                 "measured at five seeds, the recipe row led SupBaseline by about two points on average (fp32 and "
                 "bf16 alike), the paper's loop did not; one run's gap varies with the machine and its load, and one "
                 "run has finished below SupBaseline (BENCHMARKS.md, 'The demo at five seeds').")
    return "\n".join(lines)
