"""Every bad input of the error checklist through the `allspark` CLI, one row per case: the command,
its exit code, the stderr line count and the first stderr line that is not a log line or progress
bar (`(!)` marks an exit code that contradicts the expectation).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.studies.bad_inputs [--only SUBSTRING] [--camvid DIR]

Builds a tiny synthetic dataset (3 classes, 64 px) in a temporary folder and trains one 2-iteration
run for the checkpoint cases; every case then takes a few seconds. `expect` is `fail` for a bad input
(exit code must not be 0), `ok` where the right outcome is a success, `any` where both are acceptable;
`status`, where given, is the exit code the README gives the input (1 data and files, 2 config and usage).
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from allspark.config.loading import load_config
from allspark.config.schema import config_to_dict
from allspark.data.splits import make_split
from allspark.data.synthetic import BAD_SAMPLES, generate_synthetic, write_bad_samples
from allspark.runs.checkpoints import load_checkpoint
from benchmarks.studies.bad_labels import label_cases
from benchmarks.timing import ROOT, SHARED, seconds

NOISE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING) |\d+%\|")  # log lines, progress bars
CAMVID = SHARED / "data" / "camvid-mini"


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: str = "fail"
    env: dict[str, str | None] = field(default_factory=dict)
    cwd: Path | None = None
    status: int | None = None  # the exit status the README gives this input (1 data and files, 2 config and usage)


def tiny_train(root: Path, run_dir: Path, *extra: str) -> list[str]:
    """`train` argv of a 2-iteration SupBaseline on the synthetic set, loader workers in subprocesses."""
    return ["train", "demo", f"data.root={root}", f"run_dir={run_dir}", "method=sup",
            "model.num_classes=3", "model.crop_size=64", "train.batch_size=2", "train.epochs=1", "train.max_iters=2",
            "train.log_every=1", "data.workers=1", "data.labeled_list=splits/labeled.txt", "--no-progress", *extra]


def bad_checkpoints(tmp: Path, run: Path) -> dict[str, Path]:
    from safetensors.torch import save_file
    import torch

    (tmp / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    save_file({"w": torch.zeros(2)}, str(tmp / "plain.safetensors"))
    (tmp / "empty_run").mkdir()
    return {"missing": tmp / "absent.safetensors", "random bytes": tmp / "random.safetensors",
            "training state .pt": run / "checkpoints" / "latest.state.pt",
            "safetensors without config": tmp / "plain.safetensors", "run dir without checkpoints": tmp / "empty_run"}


def build_cases(tmp: Path, root: Path, run: Path, camvid: Path) -> list[Case]:
    runs = tmp / "runs"
    cases = [Case(f"train: {BAD_SAMPLES[kind]}", tiny_train(root, runs / f"s{i}", f"data.labeled_list={path}"))
             for i, (kind, path) in enumerate(write_bad_samples(root).items())]
    cases += [
        Case("train: missing list file", tiny_train(root, runs / "e3", "data.labeled_list=nope.txt")),
        Case("train: data.workers=-1", tiny_train(root, runs / "e4", "data.workers=-1")),
        Case("train: model.num_classes=2 vs classes.txt 3", tiny_train(root, runs / "e5", "model.num_classes=2")),
        Case("train: train.lr_multi=-1", tiny_train(root, runs / "e6", "train.lr_multi=-1")),
        Case("train: train.momentum=5", tiny_train(root, runs / "e7", "train.momentum=5")),
        Case("train: train.lr=abc (command line)", tiny_train(root, runs / "e8", "train.lr=abc")),
        Case("train: train.amp=fp8", tiny_train(root, runs / "e10", "train.amp=fp8")),
        Case("train: train.optimizer_kernel=fast", tiny_train(root, runs / "e11", "train.optimizer_kernel=fast")),
        Case("train: run_dir under a file", tiny_train(root, tmp / "a_file" / "run")),
        Case("train: run_dir is a file", tiny_train(root, tmp / "a_file")),
        Case("train: model.pretrained=nvidia/mit-b0 offline", tiny_train(root, runs / "e9", "model.pretrained=nvidia/mit-b0"),
             env={"HF_HUB_OFFLINE": None}),
    ]
    sci = tmp / "sci.yaml"
    sci.write_text("base: demo\ntrain:\n  lr: 2e-3\n")
    garbage = tmp / "mit_b0.pth"
    garbage.write_bytes(np.random.default_rng(1).bytes(512))
    cases += [
        Case("train: train.lr=1e-3 (command line)", tiny_train(root, runs / "sci1", "train.lr=1e-3"), expect="ok"),
        Case("train: lr: 2e-3 in a YAML file", ["train", str(sci), *tiny_train(root, runs / "sci2")[2:]], expect="ok"),
        Case("train: --device cuda without a GPU", tiny_train(root, runs / "cuda", "--device", "cuda"),
             expect="any" if _has_cuda() else "fail"),
        Case("train: corrupt pretrained .pth", tiny_train(root, runs / "pth", f"model.pretrained={garbage}"), status=1),
        Case("train: model.crop_size=8", tiny_train(root, runs / "crop8", "model.crop_size=8")),
        Case("train: model.crop_size=2000 with 1 GB free", tiny_train(root, runs / "crop2000", "model.crop_size=2000"),
             env={"ALLSPARK_MEMORY_AVAILABLE": "1G"}),
    ]
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        cases.append(Case("train: run_dir under a read-only folder", tiny_train(root, tmp / "readonly" / "run")))
    if camvid.is_dir():
        cases.append(Case("train: camvid/allspark preset as shipped",
                          ["train", "camvid/allspark", f"data.root={camvid.resolve()}", f"run_dir={runs / 'cv'}",
                           "model.pretrained=null", "--no-progress"]))
    config = tmp / "mismatch.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(load_config("demo", [f"data.root={root}", "model.num_classes=2"]))))
    cases += [Case("check-data: classes.txt 3, --num-classes 2", ["check-data", str(root), "--num-classes", "2"]),
              Case("check-data: config num_classes 2, classes.txt 3", ["check-data", str(config)])]
    image = root / "images" / "val_00000.jpg"
    eval_args = ["demo", f"data.root={root}", "method=sup", "model.num_classes=3",
                 "model.crop_size=64"]
    for kind, path in bad_checkpoints(tmp, run).items():
        cases += [Case(f"eval: --checkpoint {kind}", ["eval", *eval_args, "--checkpoint", str(path)]),
                  Case(f"predict: --checkpoint {kind}",
                       ["predict", str(image), "--checkpoint", str(path), "--out", str(tmp / "pred_bad")]),
                  Case(f"export: --checkpoint {kind}",
                       ["export", str(tmp / "bad.onnx"), "--checkpoint", str(path), "--no-check"])]
    cases += [
        Case("eval: checkpoint/config mismatch (crop 96)",
             ["eval", *eval_args[:-1], "model.crop_size=96", "--checkpoint", str(run)]),
        Case("eval: --out is a file", ["eval", *eval_args, "--checkpoint", str(run), "--out", str(tmp / "a_file")]),
        Case("eval: --amp fp8", ["eval", *eval_args, "--checkpoint", str(run), "--amp", "fp8"]),
        Case("predict: --amp fp8", ["predict", str(image), "--checkpoint", str(run), "--out", str(tmp / "pred_amp"),
                                    "--amp", "fp8"]),
        Case("predict: --out under a file",
             ["predict", str(image), "--checkpoint", str(run), "--out", str(tmp / "a_file" / "pred")]),
        Case("export: OUT under a file",
             ["export", str(tmp / "a_file" / "m.onnx"), "--checkpoint", str(run), "--no-check"]),
        Case("viz: --out under a file", ["viz", "curves", str(run), "--out", str(tmp / "a_file" / "c.png")]),
        Case("eval: whole images with 1 MB free", ["eval", *eval_args, "--checkpoint", str(run), "--out",
                                                    str(tmp / "eval_mem")], env={"ALLSPARK_MEMORY_AVAILABLE": "1M"}),
        Case("predict: an image with 1 MB free", ["predict", str(image), "--checkpoint", str(run), "--out",
                                                  str(tmp / "pred_mem")], env={"ALLSPARK_MEMORY_AVAILABLE": "1M"}),
    ]
    odd = tmp / "odd"
    odd.mkdir()
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(odd / "tiny_1x1.png")
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)).save(odd / "grey16.png")
    cases += [
        Case("predict: folder with a 1x1 image", ["predict", str(odd), "--checkpoint", str(run), "--out",
                                                  str(tmp / "pred_odd"), "--force"]),
        Case("predict: 16-bit grey PNG", ["predict", str(odd / "grey16.png"), "--checkpoint", str(run), "--out",
                                          str(tmp / "pred16"), "--force"], expect="any"),
    ]
    cases += [Case(name, argv, expect=expect) for name, argv, expect in label_cases(tmp)]
    return (cases + silent_cases(tmp, root, run) + ade20k_layout_cases(tmp) + console_cases(tmp, root, run)
            + pretrain_cases(tmp, root, run))


def pretrain_cases(tmp: Path, root: Path, run: Path) -> list[Case]:
    """Issue 29: `allspark pretrain` on no images, on an unreadable image, and with a teacher of another family."""
    (tmp / "no_images").mkdir()
    broken = tmp / "broken_images"
    broken.mkdir()
    for path in sorted((root / "images").iterdir())[:3]:
        shutil.copyfile(path, broken / path.name)
    (broken / "broken.png").write_bytes(b"not a png")
    argv = ["pretrain", "demo", "model.crop_size=64", "--iters", "2", "--batch-size", "2", "--crop", "64",
            "--no-progress"]
    return [
        Case("pretrain: --images an empty folder", [*argv, f"run_dir={tmp / 'pt1'}", "--images", str(tmp / "no_images")],
             status=1),
        Case("pretrain: --images with an unreadable image", [*argv, f"run_dir={tmp / 'pt2'}", "--images", str(broken)],
             status=1),
        Case("pretrain: --teacher a MiT run as --teacher-encoder dinov2_small",
             [*argv, f"run_dir={tmp / 'pt3'}", "--images", str(root / "images"), "--teacher", str(run),
              "--teacher-encoder", "dinov2_small"], status=1),
    ]


def silent_cases(tmp: Path, root: Path, run: Path) -> list[Case]:
    """Issue 32, items 5 and 7: inputs that went by without a word, or with a misleading one."""
    val = root / "val.txt"
    (root / "val_gone.txt").write_text(val.read_text() + "images/gone.jpg masks/gone.png\n")
    (root / "val_commented.txt").write_text("# validation images\n\n" + val.read_text())
    make_split(root / "train.txt", root / "splits" / "1_8", count=2, seed=0)
    first_unlabeled = (root / "splits" / "1_8" / "unlabeled.txt").read_text().split()[0]
    (tmp / "suggested.txt").write_text(f"{first_unlabeled}\n")
    (tmp / "nowhere").mkdir()
    (tmp / "nowhere" / "labeled.txt").write_text("x/a.jpg x/a.png\n")
    (tmp / "nowhere" / "unlabeled.txt").write_text(f"{first_unlabeled}\n")
    (tmp / "empty_folder").mkdir()
    return [
        Case("eval: a missing val image with data.skip_bad_samples=true",
             ["eval", "--checkpoint", str(run), "data.val_list=val_gone.txt", "data.skip_bad_samples=true",
              "--out", str(tmp / "eval_skip")], expect="ok"),
        Case("splits --add: --out ROOT/splits/1_8 (the presets' layout)",
             ["splits", "--add", str(tmp / "suggested.txt"), "--out", str(root / "splits" / "1_8")], expect="ok"),
        Case("splits --add: lists whose images are under no folder above --out",
             ["splits", "--add", str(tmp / "suggested.txt"), "--out", str(tmp / "nowhere")]),
        Case("check-data: a .txt list with # comment and blank lines", ["check-data", str(root / "val_commented.txt")],
             expect="ok"),
        Case("check-data: a .txt list naming a missing image", ["check-data", str(root / "val_gone.txt")]),
        Case("predict: an empty folder as the only input",
             ["predict", str(tmp / "empty_folder"), "--checkpoint", str(run), "--out", str(tmp / "pred_none")]),
        Case("export: a good checkpoint (no torchvision notes on stderr)",
             ["export", str(tmp / "good.onnx"), "--checkpoint", str(run), "--no-check"], expect="ok"),
    ]


def export_disk_case(tmp: Path, run: Path, timeout: float) -> tuple[Case, int | str, int, str]:
    """`export` onto a tmpfs of 4 MiB (root only): one line before the tracing, with the seconds it took."""
    mount = tmp / "tiny_disk"
    mount.mkdir()
    case = Case("export: OUT on a disk too small for the file", ["export", str(mount / "m.onnx"), "--checkpoint",
                                                                 str(run), "--no-check"])
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        return case, "skipped", 0, "needs root to mount a small tmpfs"
    try:
        start = time.time()
        code, count, message = run_case(case, timeout)
        return case, code, count, f"[{time.time() - start:.0f} s] {message}"
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def dinov2_small_original(prefix: str = "") -> dict:
    """Zero tensors with the names and shapes of Meta's dinov2_vits14_pretrain.pth, each name after `prefix`."""
    import torch

    width, grid = 384, 37
    shapes = {"cls_token": (1, 1, width), "pos_embed": (1, grid * grid + 1, width), "mask_token": (1, width),
              "patch_embed.proj.weight": (width, 3, 14, 14), "patch_embed.proj.bias": (width,),
              "norm.weight": (width,), "norm.bias": (width,)}
    block = {"norm1.weight": (width,), "norm1.bias": (width,), "norm2.weight": (width,), "norm2.bias": (width,),
             "attn.qkv.weight": (3 * width, width), "attn.qkv.bias": (3 * width,), "attn.proj.weight": (width, width),
             "attn.proj.bias": (width,), "ls1.gamma": (width,), "ls2.gamma": (width,),
             "mlp.fc1.weight": (4 * width, width), "mlp.fc1.bias": (4 * width,), "mlp.fc2.weight": (width, 4 * width),
             "mlp.fc2.bias": (width,)}
    shapes.update({f"blocks.{j}.{name}": shape for j in range(12) for name, shape in block.items()})
    return {prefix + name: torch.zeros(shape) for name, shape in shapes.items()}


def before_kernel_case(tmp: Path, root: Path, run: Path) -> Case:
    """A run whose config.yaml predates `train.optimizer_kernel` (it ran PyTorch's default kernel) continued with the
    default, fused: refused, naming the key, rather than continued on another kernel (issue 28)."""
    old = tmp / "runs" / "before_kernel"
    shutil.copytree(run, old)
    saved = yaml.safe_load((old / "config.yaml").read_text())
    del saved["train"]["optimizer_kernel"]
    (old / "config.yaml").write_text(yaml.safe_dump({**saved, "run_dir": str(old)}, sort_keys=False))
    return Case("train: continuing a run from before train.optimizer_kernel", tiny_train(root, old))


def wrong_line_cases(tmp: Path, root: Path, run: Path) -> list[Case]:
    """Issue 32's wrong lines: the file, value or setting named, with the README's exit status."""
    import torch

    dinov2, v2, taken = tmp / "dinov2_vits14_pretrain.pth", tmp / "unimatch_v2_best.pth", tmp / "taken.onnx"
    garbage = tmp / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(2).bytes(512))
    torch.save(dinov2_small_original(), dinov2)
    # UniMatch V2's layout: its DINOv2 as backbone.*, beside its DPT head.* (one tensor of it here)
    torch.save({"model": {**dinov2_small_original("backbone."), "head.scratch.output_conv.2.bias": torch.zeros(3)}}, v2)
    taken.write_text("an earlier export\n")
    pair = [write_image(tmp / "same" / side / "x.png") for side in ("a", "b")]
    mit = ["model.encoder=mit_b0", "model.num_classes=3", "model.crop_size=64"]
    image = root / "images" / "val_00000.jpg"
    return [
        Case("train: model.pretrained a DINOv2 file into MiT-B0", tiny_train(root, tmp / "runs" / "dv2",
                                                                            f"model.pretrained={dinov2}"), status=1),
        Case("convert-official: corrupt .pth", ["convert-official", str(garbage), str(tmp / "c.safetensors"),
                                                *mit], status=1),
        Case("convert-official: UniMatch V2 checkpoint without method=sup",
             ["convert-official", str(v2), str(tmp / "v2.safetensors"), "model.encoder=dinov2_small",
              "model.num_classes=3", "model.crop_size=518"], status=2),
        Case("convert-official: DST exists", ["convert-official", str(v2), str(taken), *mit], status=1),
        Case("export: OUT in /proc (exists, not writable)", ["export", "/proc/x.onnx", "--checkpoint", str(run),
                                                             "--no-check"], status=1),
        Case("export: OUT exists", ["export", str(taken), "--checkpoint", str(run), "--no-check"], status=1),
        Case("predict: two inputs write the same file", ["predict", *map(str, pair), "--checkpoint", str(run), "--out",
                                                          str(tmp / "pred_same")], status=1),
        Case("predict: --engine onnx without an export", ["predict", str(image), "--checkpoint", str(run), "--out",
                                                          str(tmp / "pred_onnx"), "--engine", "onnx"], status=1),
        Case("splits: --count 0", ["splits", str(root / "train.txt"), "--count", "0", "--out", str(tmp / "sp0")],
             status=2),
    ]


def write_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(path)
    return path


def interrupt_rows(tmp: Path, run: Path, only: str, timeout: float):
    """SIGINT (Ctrl-C: the process group) to eval, predict and suggest once they report progress: one line saying
    what is kept, exit 130."""
    big = tmp / "big"
    argvs = {"eval": ["eval", "demo", f"data.root={big}", "method=sup", "model.num_classes=3", "model.crop_size=64",
                      "--checkpoint", str(run)],
             "predict": ["predict", str(big / "images"), "--checkpoint", str(run), "--out", str(tmp / "pred_int")],
             "suggest": ["suggest", "--checkpoint", str(run), "--count", "2", "--list", str(big / "val.txt"),
                         "--root", str(big), "--out", str(tmp / "sug_int")]}
    cases = [Case(f"{command}: SIGINT (Ctrl-C) while running", argv, env={"TQDM_DISABLE": None}, status=130)
             for command, argv in argvs.items()]
    cases = [case for case in cases if only in case.name]
    if cases:
        generate_synthetic(big, num_train=2, num_val=300, size=64, seed=0, num_classes=3)
    for case in cases:
        yield (case, *interrupted_run(case, timeout))


def interrupted_run(case: Case, timeout: float) -> tuple[int | str, int, str]:
    """Run `case` and SIGINT its process group once stderr shows progress (`n/total`): (exit code, stderr line
    count, last stderr line that is not a log line or progress bar)."""
    proc = subprocess.Popen([sys.executable, "-m", "allspark", *case.argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=case_env(case), start_new_session=True)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(proc.stderr.fileno(), 4096), b"")))
    reader.start()
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and not re.search(rb"\b\d+/\d+\b", b"".join(chunks)):
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=timeout)
    reader.join()
    stderr = b"".join(chunks).decode(errors="replace")
    count, _ = first_message(code, stderr, proc.stdout.read().decode(errors="replace"))
    last = [line for line in stderr.splitlines() if line.strip() and not NOISE.search(line)][-1:]
    return code, count, (last or [""])[0]  # the stop's line comes after the command's notes


def _ade20k_tree(root: Path, mask: list[list[int]]) -> Path:
    """An ADE20K tree of two 16x16 training samples whose masks repeat `mask`, listed in train.txt."""
    stems = ("ADE_train_00000001", "ADE_train_00000002")
    for folder in ("images/training", "annotations/training"):
        (root / folder).mkdir(parents=True)
    for stem in stems:
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(root / f"images/training/{stem}.jpg")
        tiled = np.tile(np.array(mask, np.uint8), (8, 8))
        Image.fromarray(tiled, mode="L").save(root / f"annotations/training/{stem}.png")
    (root / "train.txt").write_text("".join(f"images/training/{s}.jpg annotations/training/{s}.png\n" for s in stems))
    return root


def ade20k_layout_cases(tmp: Path) -> list[Case]:
    """Each ADE20K layout given the other's masks (UniMatch V2's prepared ones hold 255, raw ones 150), and the
    V2 preset given the prepared masks its README links."""
    prepared = _ade20k_tree(tmp / "ade_prepared", [[0, 5], [255, 149]])
    raw = _ade20k_tree(tmp / "ade_raw", [[0, 5], [150, 1]])
    v2 = tmp / "v2_ade20k.yaml"
    v2.write_text(yaml.safe_dump({"base": "unimatch_v2/ade20k/1_64/small/sup", "data": {
        "root": str(prepared), "labeled_list": "train.txt", "val_list": "train.txt"}}))
    cases = []
    for what, root, layout in (("UniMatch V2's prepared", prepared, "ade20k"), ("raw", raw, "ade20k_prepared")):
        ade = ["model.num_classes=150", "data.labeled_list=train.txt", "data.val_list=train.txt"]
        cases += [Case(f"train: {what} ADE20K masks, data.layout={layout}",
                       tiny_train(root, tmp / "runs" / f"ade_{layout}", f"data.layout={layout}", *ade), status=1),
                  Case(f"check-data: {what} ADE20K masks, --layout {layout}",
                       ["check-data", str(root), "--layout", layout], status=1)]
    return cases + [Case("check-data: UniMatch V2's prepared ADE20K masks, unimatch_v2/ade20k preset",
                         ["check-data", str(v2)], expect="ok")]


def console_cases(tmp: Path, root: Path, run: Path) -> list[Case]:
    """The console's cases (issue 32, items 5, 6 and 8): a `base:` cycle, overrides on the embedded config and to
    check-data, eval --no-progress, a preset typo, the camvid preset's relative data.root from another folder."""
    (tmp / "cycle_a.yaml").write_text("base: cycle_b.yaml\n")
    (tmp / "cycle_b.yaml").write_text("base: cycle_a.yaml\n")
    return [
        Case("train: base: cycle (cycle_a.yaml <-> cycle_b.yaml)", ["train", str(tmp / "cycle_a.yaml")], status=2),
        Case("eval: eval.crop_size=8 over the embedded config", ["eval", "--checkpoint", str(run), "eval.crop_size=8"],
             status=2),
        Case("eval: --no-progress", ["eval", "--checkpoint", str(run), "--no-progress"], expect="ok"),
        Case("check-data: preset with key=value overrides",
             ["check-data", "demo", f"data.root={root}", "model.num_classes=3"], expect="ok"),
        Case("train: preset typo camvid/bas", ["train", "camvid/bas"], status=2),
        Case("train: camvid/allspark from a folder its data.root is not relative to",
             ["train", "camvid/allspark", "model.pretrained=null"], cwd=tmp, status=2),
    ]


def case_env(case: Case) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": str(ROOT / "src")}
    for key, value in case.env.items():
        env.pop(key, None) if value is None else env.__setitem__(key, value)
    return env


def first_message(code, stderr: str, stdout: str) -> tuple[int, str]:
    """(stderr line count, first stderr line that is not a log line or progress bar, else stdout's first line)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    message = next((line for line in lines if not NOISE.search(line)), None)
    if message is None and code != 0 and stdout.strip():  # check-data reports on stdout
        message = "(stdout) " + stdout.splitlines()[0]
    return len(lines), message or (lines[0] if lines else "")


def run_case(case: Case, timeout: float) -> tuple[int | str, int, str]:
    env = case_env(case)
    try:
        done = subprocess.run([sys.executable, "-m", "allspark", *case.argv], capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=case.cwd)
        code, stderr, stdout = done.returncode, done.stderr, done.stdout
    except subprocess.TimeoutExpired as err:
        code, stderr, stdout = "timeout", (err.stderr or b"").decode(errors="replace"), ""
    return (code, *first_message(code, stderr, stdout))


def concurrent_case(root: Path, tmp: Path, timeout: float) -> tuple[Case, int | str, int, str]:
    """A second `train` in the run directory of one still training."""
    run_dir = tmp / "runs" / "busy"
    argv = tiny_train(root, run_dir, "train.max_iters=400", "train.epochs=400", "train.eval_every=400",
                      "train.log_every=100")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "allspark", *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 60
        while not (run_dir / "metrics.jsonl").is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.5)
        case = Case("train: second run in a busy run_dir", argv)
        return (case, *run_case(case, timeout))
    finally:
        first.kill()
        first.wait()


def force_config_cases(root: Path, tmp: Path, timeout: float) -> list[tuple[Case, int | str, int, str]]:
    """A rejected --force-config (another encoder: the checkpoint cannot load), then the original command,
    which must still run."""
    run_dir = tmp / "runs" / "forced"
    original = tiny_train(root, run_dir)
    subprocess.run([sys.executable, "-m", "allspark", *original], capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)
    rows = []
    for case in (Case("train: --force-config model.encoder=mit_b1", [*original, "model.encoder=mit_b1", "--force-config"]),
                 Case("train: original command after that", original, expect="ok")):
        rows.append((case, *run_case(case, timeout)))
    return rows


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def stop_case(root: Path, tmp: Path, signum: int, timeout: float) -> tuple[Case, int | str, int, str]:
    """SIGINT (Ctrl-C: the whole process group) or SIGTERM (the process) to a training with loader workers;
    checked: `latest` holds the iteration the line names (nothing lost past the step that was running)."""
    name = signal.Signals(signum).name
    run_dir = tmp / "runs" / f"stop_{name}"
    case = Case(f"train: {name} while training", tiny_train(root, run_dir, "train.max_iters=400", "train.epochs=400",
                                                             "train.eval_every=400", "train.checkpoint_every=1000"))
    proc = subprocess.Popen([sys.executable, "-m", "allspark", *case.argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=case_env(case), start_new_session=True)
    deadline = time.time() + timeout
    while not (run_dir / "metrics.jsonl").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=timeout)
    count, message = first_message(proc.returncode, stderr, stdout)
    saved = load_checkpoint(run_dir)
    named = re.search(r"at iteration (\d+) ", message)
    if saved is None or named is None or int(named[1]) != saved[1]["iteration"]:
        message = f"LOST: latest {saved and saved[1]['iteration']} vs the line's {named and named[1]}; {message}"
    return case, proc.returncode, count, message


def torn_pair_case(root: Path, tmp: Path, timeout: float) -> tuple[Case, int | str, int, str]:
    """A run killed between the two writes of `latest` (the weights of the next iteration written, its state not):
    the same command resumes from the previous complete pair."""
    from allspark.runs.folder import RunFolder
    from allspark.runs.weights_file import read_weights, save_weights

    run_dir = tmp / "runs" / "torn"
    case = Case("train: killed between the two checkpoint writes, rerun", tiny_train(root, run_dir, "train.epochs=3"),
                expect="ok")
    run_case(case, timeout)  # finishes at iteration 2
    run = RunFolder(run_dir)
    weights, state, kept_weights, kept_state = run.weights(), run.state(), run.weights("previous"), run.state("previous")
    shutil.copyfile(weights, kept_weights)
    shutil.copyfile(state, kept_state)
    tensors, cfg = read_weights(weights)
    save_weights(weights, tensors, cfg, extra={"iteration": "3"})  # the torn write
    code, count, message = run_case(case, timeout)
    resumed = load_checkpoint(run_dir)[1]["iteration"]
    log = (run_dir / "train.log").read_text()
    if resumed != 2 or "at iteration 2 " not in log.split("resuming")[-1]:
        message = f"LOST: resumed at {resumed}; {message}"
    return case, code, count, message or "resumed at iteration 2 from the previous pair"


def damaged_pair_cases(root: Path, tmp: Path, timeout: float):
    """A run with two checkpoint pairs (iterations 1 and 2) whose `latest` state file is cut to half its size: the
    same command resumes from `previous` and says so; with `previous` cut short too, one line names the files."""
    from allspark.runs.folder import RunFolder

    trained, pairs = tmp / "runs" / "pairs", ("train.epochs=2", "train.checkpoint_every=1")  # 1 step per epoch
    run_case(Case("setup", tiny_train(root, trained, *pairs)), timeout)
    for name, expect, cut in (("latest pair cut short, rerun", "ok", ["state"]),
                              ("both checkpoint pairs cut short", "fail", ["state", "weights"])):
        run_dir = tmp / "runs" / name.split()[0]
        shutil.copytree(trained / "checkpoints", run_dir / "checkpoints")
        run = RunFolder(run_dir)
        for kind, pair in zip(cut, ("latest", "previous")):
            path = getattr(run, kind)(pair)
            os.truncate(path, path.stat().st_size // 2)
        case = Case(f"train: {name}", tiny_train(root, run_dir, *pairs), expect)
        code, count, message = run_case(case, timeout)
        if expect == "ok":
            lines = run.log.read_text().splitlines()
            message = next((line.split(" ", 2)[-1] for line in lines if " resuming " in line), "")
            if "at iteration 1 (epoch 0, batch 1) from the previous pair (latest: " not in message:
                message = f"LOST: {message or 'no resume line'}"
        yield case, code, count, message


def disk_full_case(root: Path, tmp: Path, timeout: float) -> tuple[Case, int | str, int, str]:
    """The run directory on a tmpfs with room for one set of checkpoints: the second save fails in one line,
    and the previous pair still loads. Mounting needs root; otherwise the row says it was skipped."""
    mount = tmp / "small_disk"
    mount.mkdir()
    saves = ("train.epochs=3", "train.max_iters=3", "train.checkpoint_every=1")  # at iterations 1, 2 and 3
    case = Case("train: disk full while saving a checkpoint", tiny_train(root, mount / "run", *saves))
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=70m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        return case, "skipped", 0, "needs root to mount a small tmpfs"
    try:
        code, count, message = run_case(case, timeout)
        saved = load_checkpoint(mount / "run")
        logged = message.split("error: ")[-1] in (mount / "run" / "train.log").read_text()
        if saved is None or code == 0:
            message = f"LOST: no complete pair left; {message}"
        else:
            message = f"[pair at iteration {saved[1]['iteration']} intact, line in train.log: {logged}] {message}"
        del saved
        return case, code, count, message
    finally:
        gc.collect()  # the checkpoint's memory maps, which would keep the mount busy
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def read_only_cases(tmp: Path, run: Path, timeout: float):
    """export, eval and viz into a read-only file system (a read-only tmpfs; root only): each fails at once,
    naming the folder, before the slow part."""
    mount = tmp / "read_only"
    mount.mkdir()
    cases = [Case("export: OUT on a read-only file system", ["export", str(mount / "m.onnx"), "--checkpoint", str(run)]),
             Case("eval: --out on a read-only file system", ["eval", "--checkpoint", str(run), "--out", str(mount)]),
             Case("viz: --out on a read-only file system", ["viz", "curves", str(run), "--out", str(mount / "c.png")])]
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        yield from ((case, "skipped", 0, "needs root to mount a read-only tmpfs") for case in cases)
        return
    try:
        for case in cases:
            yield (case, *run_case(case, timeout))
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def relative_paths_case(root: Path, tmp: Path, timeout: float) -> tuple[Case, int | str, int, str]:
    """A run started with relative data.root and run_dir, evaluated by its absolute folder from another folder."""
    work = tmp / "work"
    work.mkdir()
    shutil.copytree(root, work / "mydata")
    start = Case("setup", ["train", "demo", "data.root=mydata", "run_dir=runs/rel", "method=sup", "model.num_classes=3",
                           "model.crop_size=64", "train.batch_size=2", "train.epochs=1", "train.max_iters=1",
                           "data.labeled_list=splits/labeled.txt", "--no-progress"], cwd=work)
    run_case(start, timeout)
    case = Case("eval: a run with relative paths, from another folder",
                ["eval", "--checkpoint", str(work / "runs" / "rel")], expect="ok", cwd=tmp / "odd")
    return (case, *run_case(case, timeout))


def _suggest_argv(run: Path, root: Path, out: Path, list_path: Path, lines: list[str]) -> list[str]:
    """`suggest` argv choosing 2 of `lines` (written to `list_path`) into `out`."""
    list_path.write_text("".join(f"{line}\n" for line in lines))
    return ["suggest", "--checkpoint", str(run), "--list", str(list_path), "--root", str(root), "--count", "2",
            "--out", str(out), "--threads", "1", "--device", "cpu"]


def _scores_csv(out: Path) -> list[dict]:
    import csv

    with open(out / "scores.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def suggest_store_cases(root: Path, tmp: Path, run: Path, timeout: float):
    """`suggest` into an --out that holds scores: of another version of the list (2 lines gone, 2 new, reordered:
    checked that only the new ones are scored, scores.csv holds the list's images with the scores they had and
    suggested.txt is its top), and of another checkpoint (refused)."""
    from allspark.runs.weights_file import read_weights, resolve_weights, save_weights

    out = tmp / "suggest_store"
    first = [line.split()[0] for line in (root / "train.txt").read_text().splitlines()]
    second = (first[:2] + first[4:] + [line.split()[0] for line in (root / "val.txt").read_text().splitlines()])[::-1]
    run_case(Case("setup", _suggest_argv(run, root, out, tmp / "suggest_first.txt", first)), timeout)
    before = {row["image"]: row["score"] for row in _scores_csv(out)}
    case = Case("suggest: --out holding scores of another list version",
                _suggest_argv(run, root, out, tmp / "suggest_second.txt", second), expect="ok")
    done = subprocess.run([sys.executable, "-m", "allspark", *case.argv], capture_output=True, text=True,
                          env=case_env(case), timeout=timeout)
    count, message = first_message(done.returncode, done.stderr, done.stdout)
    said = next((line for line in done.stdout.splitlines() if line.startswith("scoring ")), "")  # after the precision
    rows_ = _scores_csv(out) if done.returncode == 0 else []
    ranked = [row["image"] for row in sorted((r for r in rows_ if r["rank"]), key=lambda r: int(r["rank"]))]
    right = ([row["image"] for row in rows_] == second and said.startswith("scoring 2 of 6 images")
             and all(before[row["image"]] == row["score"] for row in rows_ if row["image"] in before)
             and (out / "suggested.txt").read_text().split() == ranked)
    if done.returncode == 0:
        message = f"(stdout) {said}" + (" [scores.csv: the list's images, kept scores equal; suggested.txt its top]"
                                         if right else "")
    yield case, done.returncode, count, message if right else f"WRONG: {message}"
    tensors, cfg = read_weights(resolve_weights(run))
    name = next(key for key, tensor in tensors.items() if tensor.is_floating_point())
    save_weights(tmp / "other.safetensors", {**tensors, name: tensors[name] + 1}, cfg)
    case = Case("suggest: --out holding scores of another checkpoint",
                _suggest_argv(tmp / "other.safetensors", root, out, tmp / "suggest_second.txt", second))
    yield (case, *run_case(case, timeout))


def no_run_folder_case(root: Path, tmp: Path, timeout: float) -> tuple[Case, int | str, int, str]:
    """A train refused at its start (classes.txt 3, model.num_classes 2) leaves no run folder behind."""
    case = Case("train: refused start leaves no run folder", tiny_train(root, tmp / "runs" / "refused",
                                                                         "model.num_classes=2"))
    code, count, message = run_case(case, timeout)
    left = (tmp / "runs" / "refused").exists()
    return case, code, count, (f"WRONG: the run folder was made; {message}" if left else f"[no run folder] {message}")


def progress_lines_case(root: Path, tmp: Path, timeout: float) -> tuple[Case, int | str, int, str]:
    """train with its progress shown, stderr a pipe: plain lines every train.log_every steps, no bar redraws."""
    argv = [item for item in tiny_train(root, tmp / "runs" / "lines", "train.epochs=2") if item != "--no-progress"]
    case = Case("train: progress with stderr not a terminal", argv, expect="ok", env={"TQDM_DISABLE": None})
    done = subprocess.run([sys.executable, "-m", "allspark", *case.argv], capture_output=True, text=True,
                          env=case_env(case), timeout=timeout)
    lines = [line for line in done.stderr.splitlines() if " INFO sup: " in line]
    right = "\r" not in done.stderr and [line.split(" INFO ")[1].split(",")[0] for line in lines] == [
        "sup: 1/2 (50%)", "sup: 2/2 (100%)"]
    message = (lines or ["no progress line"])[0].split(" INFO ")[-1]
    return case, done.returncode, len(done.stderr.splitlines()), message if right else f"WRONG: {message}"


def demo_folders_case() -> tuple[Case, int | str, int, str]:
    """`demo --data-seed 3 --seed 2` writes demo_data_seed3/ and runs/demo_seed2_data3/: both ignored by git."""
    from allspark.demo import default_folders

    case = Case("demo: --data-seed 3 --seed 2 folders in the checkout", ["demo", "--data-seed", "3"], expect="ok")
    folders = [f"{folder}/x" for folder in default_folders(2, 3)]
    done = subprocess.run(["git", "check-ignore", "--no-index", *folders], capture_output=True, text=True, cwd=ROOT)
    ignored = done.stdout.split()
    message = f"ignored by git: {', '.join(ignored) or 'none'}"
    return case, 0 if ignored == folders else 1, 0, message if ignored == folders else f"WRONG: {message}"


def rows(cases: list[Case], root: Path, tmp: Path, args: argparse.Namespace):
    """(case, exit code, stderr line count, message) for each case, then the busy run_dir and --force-config cases."""
    for case in cases:
        yield case, *run_case(case, args.timeout)
    if "second run" in args.only or not args.only:
        yield concurrent_case(root, tmp, args.timeout)
    if "force-config" in args.only or not args.only:
        yield from force_config_cases(root, tmp, args.timeout)
    for signum in (signal.SIGINT, signal.SIGTERM):
        if args.only in f"train: {signal.Signals(signum).name} while training":
            yield stop_case(root, tmp, signum, args.timeout)
    if args.only in "train: killed between the two checkpoint writes, rerun":
        yield torn_pair_case(root, tmp, args.timeout)
    damaged = ("train: latest pair cut short, rerun", "train: both checkpoint pairs cut short")
    if any(args.only in name for name in damaged):
        yield from (row for row in damaged_pair_cases(root, tmp, args.timeout) if args.only in row[0].name)
    if args.only in "train: disk full while saving a checkpoint":
        yield disk_full_case(root, tmp, args.timeout)
    yield from (row for row in read_only_cases(tmp, tmp / "runs" / "good", args.timeout) if args.only in row[0].name)
    if args.only in "export: OUT on a disk too small for the file":
        yield export_disk_case(tmp, tmp / "runs" / "good", args.timeout)
    yield from interrupt_rows(tmp, tmp / "runs" / "good", args.only, args.timeout)
    if args.only in "eval: a run with relative paths, from another folder":
        yield relative_paths_case(root, tmp, args.timeout)
    if args.only in "train: refused start leaves no run folder":
        yield no_run_folder_case(root, tmp, args.timeout)
    if args.only in "train: progress with stderr not a terminal":
        yield progress_lines_case(root, tmp, args.timeout)
    if args.only in "demo: --data-seed 3 --seed 2 folders in the checkout":
        yield demo_folders_case()
    if any(args.only in f"suggest: --out holding scores of another {what}" for what in ("list version", "checkpoint")):
        yield from (row for row in suggest_store_cases(root, tmp, tmp / "runs" / "good", args.timeout)
                    if args.only in row[0].name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per case")
    parser.add_argument("--width", type=int, default=150, help="characters of stderr shown per row")
    parser.add_argument("--camvid", type=Path, default=CAMVID, help="camvid-mini, for the preset case (skipped if absent)")
    args = parser.parse_args()
    print(f"\n{seconds(lambda: run_all(args)):.0f} s in all")


def run_all(args: argparse.Namespace) -> None:
    """Train the setup run, then every chosen case, printing its row."""
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        root = generate_synthetic(tmp / "data", num_train=6, num_val=2, size=64, seed=0, num_classes=3)
        make_split(root / "train.txt", root / "splits", count=2, seed=0)
        (tmp / "a_file").write_text("not a folder\n")
        (tmp / "readonly").mkdir(mode=0o555)
        run = tmp / "runs" / "good"
        code, _, message = run_case(Case("setup", tiny_train(root, run)), args.timeout)
        if code != 0:
            sys.exit(f"setup training failed: {message}")
        cases = [c for c in build_cases(tmp, root, run, args.camvid) + wrong_line_cases(tmp, root, run)
                 + [before_kernel_case(tmp, root, run)] if args.only in c.name]
        print("| command: bad input | expect | exit | stderr lines | first stderr line (not a log line or progress bar) |")
        print("|---|---|---|---|---|")
        for case, code, count, message in rows(cases, root, tmp, args):
            message = message.replace(folder, "$TMP").replace("|", "\\|")[: args.width]
            flag = " (!)" if (case.expect == "fail" and code == 0) or (case.expect == "ok" and code != 0) or \
                (case.status is not None and code != case.status) or message.startswith(("LOST", "WRONG")) else ""
            print(f"| {case.name} | {case.expect} | {code}{flag} | {count} | {message} |", flush=True)


if __name__ == "__main__":
    main()
