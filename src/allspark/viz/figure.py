"""Figures of an exact pixel size, drawn off-screen (no pyplot state, no display needed)."""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100


def parse_size(text: str) -> tuple[int, int]:
    """'1200x800' -> (1200, 800): width and height in pixels."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"size must be WIDTHxHEIGHT in pixels, e.g. 1200x800; got {text!r}")
    return int(parts[0]), int(parts[1])


def new_figure(size: tuple[int, int]) -> Figure:
    """A figure that saves to exactly `size` = (width, height) pixels."""
    width, height = size
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure as PNG (no tight bounding box, so the pixel size is kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path
