"""Relevance map: where in the open study the model sees a prompt, as one overlay per scan.

``hlip_engine.relevance.relevance`` does the work, on this computer or on ``hlip serve`` (the chosen engine,
:func:`hlip_napari._engine.current_engine`; the model's method: the official HLIP last-block method, or
Chefer's rollout where the model chose it; the Method box overrides) and maps it back onto each scan's
own voxels; the ``Relevance`` also says which scan matters most and where its peak is. This view only
draws: overlays, the scan-importance chart, and the jump to the peak.
"""
from __future__ import annotations

import weakref

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from .. import _engine
from .._layers import (
    SCAN_KEY,
    STUDY_KEY,
    relevance_colormap,
    relevance_layer_data,
    scan_name,
    study_label,
)
from .._on_screen import on_screen
from .._view import go_to, open_study_or_warn, scan_layers, unwrap
from .jobs import Job, follow, follow_layer
from .model_panel import ModelBox
from .plot import BarChart, render_bars
from .save_to_pacs import SaveToPacs

COLORMAPS = ("HLIP (transparent to yellow)", "inferno", "turbo", "magma", "red")


MODEL_DEFAULT = "model's default"


def relevance_job(settings, study, prompt: str, templates: list[str] | None, chart_width: int = 420,
                  method: str | None = None, engine_settings=None):
    """Worker: the chosen engine's Relevance for ``prompt`` on ``study`` (maps on each scan's voxels), the
    maps normalised to the study's maximum, and the scan-importance chart (all off the Qt thread)."""
    engine = _engine.current_engine(settings, engine_settings)
    yield from engine.warm_up()
    yield "computing relevance"
    rel = engine.relevance(study, prompt, templates=templates or None, method=method)
    yield "drawing"
    # float32 here, in the worker: converting four 512^2 x 75 maps on the Qt thread froze it for 0.3 s
    volumes = [np.ascontiguousarray(v, dtype=np.float32) for v in rel.display_volumes()]
    order, totals = rel.source_importance()
    bars = render_bars([scan_name(study.scans[k], k) for k in order], totals, width_px=chart_width,
                       highlight=int(np.argmax(totals)) if len(totals) else None)
    return rel, volumes, bars


class RelevanceWidget(QWidget):
    """Docked relevance maps. ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self.screen = on_screen(self.viewer)
        self.result = None
        self.study = None
        self.layers: list = []
        self._followed: weakref.WeakSet = weakref.WeakSet()  # scan layers whose show/hide overlays follow
        self.job = Job("Relevance")
        self.model_box = ModelBox()

        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("Finding to localise, e.g. glioma, then Enter")
        self.prompt.returnPressed.connect(self.run)
        self.template = QLineEdit()
        self.template.setPlaceholderText("optional template, e.g. This MRI study shows: {}.")
        from hlip_engine.relevance.methods import METHODS

        self.method = QComboBox()
        self.method.addItems([MODEL_DEFAULT, *METHODS])
        self.method.setToolTip("\n".join(f"{k}: {v}" for k, v in METHODS.items()))
        form = QFormLayout()
        form.addRow("Prompt", self.prompt)
        form.addRow("Template", self.template)
        form.addRow("Method", self.method)

        self.run_button = QPushButton("Show where the model sees it")
        self.run_button.clicked.connect(self.run)
        buttons, self.cancel_button = self.job.buttons(self.run_button)

        self.colormap = QComboBox()
        self.colormap.addItems(COLORMAPS)
        self.colormap.currentTextChanged.connect(lambda _t: self.restyle())
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(60)
        self.opacity.valueChanged.connect(lambda _v: self.restyle())
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 95)
        self.threshold.setValue(20)
        self.threshold.setToolTip("Hide relevance below this fraction of the study's maximum")
        self.threshold.valueChanged.connect(lambda _v: self.restyle())
        overlay = QFormLayout()
        overlay.addRow("Colour map", self.colormap)
        overlay.addRow("Opacity", self.opacity)
        overlay.addRow("Threshold", self.threshold)

        self.jump_button = QPushButton("Go to the most relevant slice")
        self.jump_button.setEnabled(False)
        self.jump_button.clicked.connect(self.go_to_peak)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.job.on_cancel(lambda: self.status.setText("Cancelled."))
        self.chart = BarChart(self)

        self.setMinimumWidth(340)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_box)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addLayout(overlay)
        layout.addWidget(self.jump_button)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("Scan importance (share of relevance)"))
        layout.addWidget(self.chart, 1)
        self.save_to_pacs = SaveToPacs(self.screen, self.model_box, self.report_request, self)
        layout.addWidget(self.save_to_pacs)
        follow(self, self.screen.study_changed, self.study_changed)
        self.study_changed(self.screen.study)

    def study_changed(self, study) -> None:
        """Another study on screen: this widget's result was for the one before (its overlays left with it),
        so it goes, and the peak button waits for a result of this study."""
        self.job.stop()
        if hasattr(self, "save_to_pacs"):
            self.save_to_pacs.clear()
        self.result, self.study, self.layers = None, None, []
        self.jump_button.setEnabled(False)
        self.chart.clear_bars()
        self.status.setText(f"Open study: {study_label(study)} · {study.description or study.uid}." if study
                            is not None else "No study open.")

    # --- running ---------------------------------------------------------------------------------
    def run(self):
        from napari.utils.notifications import show_warning

        study = open_study_or_warn(self.viewer)
        if study is None:
            return None
        prompt = self.prompt.text().strip()
        if not prompt:
            show_warning("Type the finding to localise first, e.g. 'glioma'.")
            return None
        template = self.template.text().strip()
        self.status.setText(f"Computing relevance of “{prompt}” …")
        return self.job.start(relevance_job, self.model_box.settings(), study, prompt,
                              [template] if template else None, self.chart.render_width(),
                              None if self.method.currentText() == MODEL_DEFAULT else self.method.currentText(),
                              self.model_box.engine_settings(), steps=3, screen=self.screen,
                              on_done=lambda r: self.show_result(study, *r),
                              on_error=lambda _e: self.status.setText("Relevance failed (see the notification)."))

    def report_request(self):
        """(study, report options) for Save to PACS: the prompt's relevance maps and peak, with the model's
        default findings."""
        from napari.utils.notifications import show_warning

        study = open_study_or_warn(self.viewer)
        prompt = self.prompt.text().strip()
        if study is None:
            return None
        if not prompt:
            show_warning("Type the finding to localise first, e.g. 'glioma'.")
            return None
        method = None if self.method.currentText() == MODEL_DEFAULT else self.method.currentText()
        return study, {"relevance_prompts": [prompt], "prompt_set": None, "method": method}

    # --- showing -----------------------------------------------------------------------------------
    def show_result(self, study, rel, volumes, bars) -> None:
        """One overlay per scan (normalised to the study's maximum), the importance chart, the jump button.
        A result for a study no longer on screen is dropped."""
        if study is not self.screen.study:
            return
        for layer in [x for x in self.layers if x in self.viewer.layers]:  # the previous prompt's overlays
            self.viewer.layers.remove(layer)
        self.result, self.study, self.layers = None, study, []
        base = {layer.metadata[SCAN_KEY]: layer for layer in scan_layers(self.viewer, study)}
        added = []
        for k, volume in zip(rel.volume_scans or [], volumes):
            data, kwargs, _kind = relevance_layer_data(study, k, volume, rel.prompt,
                                                       threshold=self.threshold.value() / 100,
                                                       opacity=self.opacity.value() / 100)
            kwargs["visible"] = base[k].visible if k in base else True
            added.append(self.viewer.add_image(data, **kwargs))
        self.chart.show_bars(bars)
        for scan_layer in base.values():  # an overlay follows its scan's show/hide
            self._follow(scan_layer)
        self.layers = added
        self.restyle()
        self.jump_button.setEnabled(bool(added))
        self.status.setText(f"{study_label(study)} · “{rel.prompt}” ({rel.method}): logit {rel.logit:.2f}. "
                            "Overlays are relative to this study's maximum; research use only.")
        if added:
            self.viewer.layers.selection.active = added[0]
        self.result = rel

    def _follow(self, scan_layer) -> None:
        """Show or hide this widget's overlay of ``scan_layer``'s scan with it (one connection per layer, held
        weakly: a scan layer re-used for the next study pins no closed study's overlays)."""
        follow_layer(self, self._followed, scan_layer, "visible", self._scan_shown)

    def _scan_shown(self, scan) -> None:
        for overlay in self.layers:
            md = overlay.metadata
            if md.get(STUDY_KEY) is scan.metadata.get(STUDY_KEY) and md.get(SCAN_KEY) == scan.metadata.get(SCAN_KEY):
                overlay.visible = scan.visible

    def restyle(self) -> None:
        """Apply the colour map, opacity and threshold to this prompt's overlays."""
        name = self.colormap.currentText()
        cmap = relevance_colormap() if name == COLORMAPS[0] else name
        lo = self.threshold.value() / 100
        wanted = cmap.name if hasattr(cmap, "name") else cmap
        for layer in self.layers:  # only what changed: a colour map set again rebuilds its GL program
            if layer.colormap.name != wanted:
                layer.colormap = cmap
            if layer.opacity != self.opacity.value() / 100:
                layer.opacity = self.opacity.value() / 100
            if tuple(layer.contrast_limits) != (lo, 1.0):
                layer.contrast_limits = (lo, 1.0)

    def peak(self) -> tuple[int, np.ndarray] | None:
        """(scan index, world point S,P,L) of the relevance peak of the most important scan."""
        found = self.result.peak() if self.result is not None else None
        if found is None:
            return None
        k, voxel = found
        return k, self.study.scans[k].world(voxel)[::-1]

    def go_to_peak(self) -> None:
        """Show the most important scan in its own plane, at its most relevant slice."""
        found = self.peak() if self.study is not None and self.study is self.screen.study else None
        if found is None:
            self.jump_button.setEnabled(False)
            return
        k, world = found
        for layer in scan_layers(self.viewer, self.study):
            layer.visible = layer.metadata[SCAN_KEY] == k
        for layer in self.layers:
            layer.visible = layer.metadata[SCAN_KEY] == k
        scan = self.study.scans[k]
        plane = scan.orientation if scan.orientation != "oblique" else "axial"
        go_to(self.viewer, world, plane)
        name = scan_name(scan, k)
        slice_number = self.result.peak()[1][0] + 1  # the scan's own slice holding the peak, counted from 1
        self.status.setText(f"Most relevant: {name}, slice {slice_number} of {scan.shape[0]} ({plane}).")
