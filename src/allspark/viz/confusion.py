"""Confusion matrix (row-normalised) and per-class IoU bars from the `eval.json` of `allspark eval`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from allspark.errors import InputError
from allspark.runs.folder import RunFolder
from allspark.viz.figure import new_figure, save_figure


def read_eval(path: str | Path) -> dict:
    """The eval.json written by `allspark eval`, checked for the keys the plot needs."""
    path = Path(path)
    if path.is_dir():
        path = RunFolder(path).eval_json
    if not path.is_file():
        raise FileNotFoundError(f"evaluation file not found: {path} (expected eval.json from `allspark eval`)")
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    missing = [key for key in ("iou", "confusion") if key not in result]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)}")
    confusion = np.asarray(result["confusion"], dtype=np.float64)
    k = len(result["iou"])
    if confusion.shape != (k, k):
        raise InputError(f"{path}: 'confusion' must be {k}x{k} (one row per class of 'iou'); got {confusion.shape}")
    return result


def plot_confusion(result: dict, out: str | Path, size: tuple[int, int] = (1200, 600)) -> Path:
    """Left: confusion matrix with rows (ground truth) normalised to 1; right: IoU per class."""
    confusion = np.asarray(result["confusion"], dtype=np.float64)  # (K, K), rows = ground truth
    iou = np.asarray([np.nan if v is None else v for v in result["iou"]], dtype=np.float64)
    k = len(iou)
    names = result.get("class_names") or [str(i) for i in range(k)]
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    fig = new_figure(size)
    ax_matrix, ax_bars = fig.subplots(1, 2)
    image = ax_matrix.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(image, ax=ax_matrix, fraction=0.046)
    if k <= 20:  # numbers stay legible only for few classes
        for (row, col), value in np.ndenumerate(normalised):
            ax_matrix.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                           color="white" if value > 0.5 else "black")
    ticks = np.arange(k)
    ax_matrix.set_xticks(ticks, names, rotation=90, fontsize="small")
    ax_matrix.set_yticks(ticks, names, fontsize="small")
    ax_matrix.set_xlabel("predicted")
    ax_matrix.set_ylabel("ground truth")
    ax_matrix.set_title("confusion (rows sum to 1)")
    percent = 100 * np.nan_to_num(iou)  # eval.json holds fractions; what a person reads is in percent
    ax_bars.barh(ticks, percent, color="tab:blue")
    ax_bars.set_yticks(ticks, names, fontsize="small")
    ax_bars.invert_yaxis()
    ax_bars.set_xlim(0, 100)
    miou = 100 * result.get("miou", float(np.nanmean(iou)))
    ax_bars.axvline(miou, color="tab:red", linestyle="--", label=f"mIoU {miou:.2f} %")
    ax_bars.set_xlabel("IoU (%)")
    ax_bars.set_title(f"per-class IoU ({result.get('mode', 'eval')})")
    ax_bars.legend(loc="lower right")
    return save_figure(fig, out)
