"""Training curves of a run: losses, learning rate and validation mIoU from `metrics.jsonl`."""
from __future__ import annotations

from pathlib import Path

from allspark.errors import InputError
from allspark.viz.figure import new_figure, save_figure

LOSS_KEYS = ("loss", "loss_l", "loss_u")


def _series(records: list[dict], split: str, key: str) -> tuple[list[float], list[float]]:
    rows = [r for r in records if r.get("split") == split and r.get(key) is not None and "iter" in r]
    return [r["iter"] for r in rows], [r[key] for r in rows]


def plot_curves(records: list[dict], out: str | Path, size: tuple[int, int] = (1200, 400), title: str = "") -> Path:
    """One panel each for the training losses, the learning rate and validation mIoU."""
    panels = []
    losses = {key: _series(records, "train", key) for key in LOSS_KEYS}
    if any(xs for xs, _ in losses.values()):
        panels.append(("training loss", {k: v for k, v in losses.items() if v[0]}))
    lr = _series(records, "train", "lr")
    if lr[0]:
        panels.append(("learning rate", {"lr": lr}))
    iters, miou = _series(records, "val", "miou")  # fractions in metrics.jsonl, drawn in percent
    if iters:
        panels.append(("validation mIoU (%)", {"mIoU": (iters, [100 * value for value in miou])}))
    if not panels:
        raise InputError("no train or val records with 'iter' and loss, lr or miou to plot")
    fig = new_figure(size)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, series) in zip(axes, panels):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)
