"""Bar charts for docks (probabilities, scan importance), drawn off the Qt thread.

Laying out and rasterising a matplotlib figure takes 0.2-0.7 s on a busy 2-core machine: done on the
Qt thread it freezes the viewer. So the worker that computed the numbers also renders the chart
(matplotlib's Agg canvas needs no GUI) and the dock only shows the finished image.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy

BACKGROUND = "#262930"  # napari's dark theme
TEXT = "#d6d6d6"
DPI = 100


@dataclass
class Bars:
    """What a chart shows, plus its rendered RGBA image (H, W, 4) uint8."""

    labels: list[str]
    values: list[float]
    image: np.ndarray


def render_bars(labels: Sequence[str], values: Sequence[float], *, width_px: int = 420, xmax: float | None = 1.0,
                title: str = "", highlight: int | None = None, fmt: str = "{:.0%}") -> Bars:
    """Horizontal bars, first label on top, values at the bar ends; thread-safe (no pyplot, no Qt)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels, values = [str(t) for t in labels], [float(v) for v in values]
    height_px = min(70 + 26 * len(labels), 520) if labels else 90  # bars keep a readable thickness
    fig = Figure(figsize=(max(width_px, 200) / DPI, height_px / DPI), dpi=DPI, facecolor=BACKGROUND,
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ax.set_facecolor(BACKGROUND)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#8a8d93")
    ax.tick_params(colors=TEXT, labelsize=8)
    if not labels:
        ax.set_yticks([])
        ax.set_xticks([])
        ax.text(0.5, 0.5, "no results yet", color="#8a8d93", ha="center", va="center", transform=ax.transAxes)
    else:
        ys = list(range(len(labels)))[::-1]
        colors = ["#f0a030" if i == highlight else "#4f9bd9" for i in range(len(labels))]
        ax.barh(ys, values, color=colors, height=0.7)
        ax.set_yticks(ys, [t if len(t) <= 28 else t[:27] + "…" for t in labels])
        top = xmax if xmax is not None else max(max(values), 1e-9) * 1.15
        ax.set_xlim(0, top)
        for y, v in zip(ys, values):
            ax.text(min(v, top) + top * 0.01, y, fmt.format(v), va="center", color=TEXT, fontsize=8)
        if title:
            ax.set_title(title, color=TEXT, fontsize=9)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba()).copy()  # (H, W, 4)
    return Bars(labels, values, image)


class BarChart(QLabel):
    """Shows a chart rendered by :func:`render_bars` (in a worker); ``labels``/``values`` say what it shows."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.labels: list[str] = []
        self.values: list[float] = []
        self.setText("")

    def render_width(self) -> int:
        """The width (px) a worker should render for this dock."""
        return max(self.width(), self.parentWidget().width() - 24 if self.parentWidget() else 0, 300)

    def clear_bars(self) -> None:
        """Nothing shown (the study the chart was for left the screen)."""
        self.labels, self.values = [], []
        self.clear()
        self.setFixedHeight(0)

    def show_bars(self, bars: Bars) -> None:
        self.labels, self.values = list(bars.labels), list(bars.values)
        img = np.ascontiguousarray(bars.image)
        h, w = img.shape[:2]
        qimg = QImage(img.data, w, h, img.strides[0], QImage.Format.Format_RGBA8888).copy()
        self.setPixmap(QPixmap.fromImage(qimg))
        self.setFixedHeight(h)
