"""Study browser: open a study, see its scans (and what was skipped, and why), show/hide them, window them.

The table mirrors the viewer's scan layers of the open study; the viewer stays the one source of truth.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QBrush, QColor, QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._layers import (
    SCAN_KEY,
    STUDY_KEY,
    WINDOW_KEY,
    auto_limits,
    contrast_text,
    scan_warnings,
    study_header,
    window_limits,
    window_presets,
)
from .._on_screen import on_screen
from .._reading import reading
from .._show import show_study, watch
from .._view import PLANES, add_ruler, open_study, scan_layers, show_plane, unwrap
from .jobs import Job, follow

THUMB = 56  # px
MR_AUTO = "MR auto (0.5-99.5 %)"
COLUMNS = ("Show", "#", "Description", "Mod.", "Size / mm", "Plane")
WARNING_BRUSH = QColor(120, 80, 0)  # row background of a scan the loader changed (amber, dark theme)


def thumbnail(voxels: np.ndarray, limits: tuple[float, float]) -> QIcon:
    """The middle slice in the scan's own plane, windowed, as a small icon (a PACS series strip)."""
    sl = np.asarray(voxels[voxels.shape[0] // 2])
    step = max(1, max(sl.shape) // THUMB)
    sl = sl[::step, ::step]
    lo, hi = limits
    img = np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1)
    img = np.ascontiguousarray((img * 255).astype(np.uint8))
    qimg = QImage(img.data, img.shape[1], img.shape[0], img.strides[0], QImage.Format.Format_Grayscale8)
    return QIcon(QPixmap.fromImage(qimg.copy()))


def _short(item: str, root: str) -> str:
    """A skipped file named relative to the study folder (the full path stays in the tooltip)."""
    try:
        return str(Path(item).relative_to(root)) if root else item
    except ValueError:
        return item


def _spacing_text(spacing) -> str:
    return "×".join(f"{s:.3g}" for s in spacing)


def filed_findings(study) -> list[dict]:
    """Our SRs among the study's files (the loader lists SR files among the skipped items), read back by the
    engine (pydicom only), newest first."""
    from hlip_engine.report import findings_from_sr

    found = [findings_from_sr(str(item)) for item, why in study.skipped if "structured report" in str(why)]
    return sorted((f for f in found if f), key=lambda f: f.get("content_date", ""), reverse=True)


def load_study_job(path: str):
    """Worker: the studies at ``path`` (usually one), loaded by the engine."""
    yield f"reading {path}"
    from .._reader import load_studies

    return load_studies(path)


class StudyBrowser(QWidget):
    """Docked study browser. ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self.screen = on_screen(self.viewer)
        watch(self.viewer)
        self.study = None
        self._layers: list = []
        self._updating = False
        self.job = Job("Open study", on_busy=self._set_busy)
        self.job.on_cancel(self._opening_stopped)

        self.open_button = QPushButton("Open study folder…")
        self.open_button.setToolTip("A folder with DICOM files (any depth, with or without DICOMDIR), "
                                    "NIfTI files or HLIP .pt tensors")
        self.open_button.clicked.connect(self._choose_folder)
        self.file_button = QPushButton("Open file…")
        self.file_button.setToolTip("A DICOMDIR, a .nii/.nii.gz file or one DICOM file of the study")
        self.file_button.clicked.connect(self._choose_file)
        self.title = QLabel("No study open")
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setIconSize(QSize(THUMB, THUMB))
        self.table.verticalHeader().setDefaultSectionSize(THUMB + 4)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        # the description takes the width left (its text wraps); every column, Plane included, stays in view
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        header.setMinimumSectionSize(30)
        header.setStretchLastSection(False)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setWordWrap(True)
        self.setMinimumWidth(420)
        self.table.setToolTip("Tick to show a scan; double-click to show only that scan")
        self.table.itemChanged.connect(self._item_changed)
        self.table.itemSelectionChanged.connect(self._row_selected)
        self.table.cellDoubleClicked.connect(self._show_only)

        self.window = QComboBox()
        self._fill_windows("CT")
        self.window.setToolTip("Window/level for the selected scans (all shown scans when none is selected)")
        self.window.activated.connect(lambda _i: self.apply_window(self.window.currentData()))
        window_row = QHBoxLayout()
        window_row.addWidget(QLabel("Window"))
        window_row.addWidget(self.window, 1)
        plane_row = QHBoxLayout()
        plane_row.addWidget(QLabel("View"))
        for plane in PLANES:
            button = QPushButton(plane.capitalize())
            button.setToolTip(f"{plane.capitalize()} view, hung as radiologists read it")
            button.clicked.connect(lambda _c=False, p=plane: show_plane(self.viewer, p))
            plane_row.addWidget(button)

        self.skipped = QTableWidget(0, 2)
        self.skipped.setHorizontalHeaderLabels(("Skipped item", "Reason"))
        self.skipped.verticalHeader().setVisible(False)
        self.skipped.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.skipped.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.skipped.horizontalHeader().setStretchLastSection(True)
        self.skipped.setWordWrap(True)
        skipped_box = QGroupBox("Skipped while loading")
        QVBoxLayout(skipped_box).addWidget(self.skipped)
        self.skipped_box = skipped_box
        skipped_box.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

        self.pacs_mouse = QCheckBox("PACS mouse")
        self.pacs_mouse.setChecked(True)
        self.pacs_mouse.setToolTip("Wheel: next/previous slice · Ctrl+wheel: zoom · drag: window/level · "
                                   "middle or Shift+drag: pan.\nOff: napari's own mouse (wheel zooms, drag pans).")
        self.pacs_mouse.toggled.connect(lambda on: reading(self.viewer).set_pacs(on))
        self.identifiers = QCheckBox("Show identifiers")
        self.identifiers.setToolTip("Show the patient's name and ID in the header (hidden by default)")
        self.identifiers.toggled.connect(lambda _on: self._show_header(self.study))
        self.ruler_button = QPushButton("Ruler")
        self.ruler_button.setToolTip("Draw a line on the slice: its length shows in mm")
        self.ruler_button.clicked.connect(self.add_ruler)
        self.hang_button = QPushButton("3-up")
        self.hang_button.setToolTip("Axial here, coronal and sagittal beside it, with a linked crosshair")
        self.hang_button.clicked.connect(self.hang_3up)
        self.compare = QCheckBox("Compare")
        self.compare.setToolTip("Open the next study beside this one (a prior), in its own labelled canvas, "
                                "instead of replacing it")
        self.compare.toggled.connect(self._compare_toggled)
        tools = QHBoxLayout()
        tools.addWidget(self.pacs_mouse)
        tools.addWidget(self.compare)
        tools.addWidget(self.ruler_button)
        tools.addWidget(self.hang_button)
        tools.addWidget(self.identifiers)
        tools.addStretch(1)

        buttons = QHBoxLayout()
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.file_button)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.title)
        self.findings = QLabel("")
        self.findings.setWordWrap(True)
        self.findings.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.findings.setVisible(False)
        layout.addWidget(self.findings)
        layout.addLayout(tools)
        layout.addWidget(self.table, 3)
        layout.addLayout(window_row)
        layout.addLayout(plane_row)
        layout.addWidget(skipped_box, 1)

        # the table renders the study on screen; a layer removed by hand (a scan closed) updates it too
        follow(self, self.screen.study_changed, self._schedule_refresh)
        follow(self, self.screen.failed, self._opening_stopped)
        follow(self, self.viewer.layers.events.removed, self._schedule_refresh)
        follow(self, self.viewer.layers.selection.events.active, self._schedule_refresh)
        self.refresh()

    # --- opening -------------------------------------------------------------------------------
    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a study folder")
        if path:
            self.open_path(path)

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a study file", "",
                                              "Studies (DICOMDIR *.dcm *.nii *.nii.gz);;All files (*)")
        if path:
            self.open_path(path)

    def open_path(self, path: str):
        """Load the study at ``path`` in a worker, then add its scans as layers."""
        self.title.setText(f"Opening {path} …")
        return self.job.start(load_study_job, str(path), steps=1, on_done=lambda s: self._loaded(s, path),
                              on_error=lambda e: self.screen.fail(str(e) if str(path) in str(e)
                                                                  else f"Could not open {path}: {e}"))

    def _opening_stopped(self, why: str = "Opening cancelled.") -> None:
        """Say why nothing new opened, above the study still shown (if any)."""
        self.refresh()
        if self.study is not None:
            self._show_header(self.study)
        shown = self.title.text() if self.study is not None else ""
        self.title.setText(f"<span style='color:#f0b040'>{why}</span>" + (f"<br>{shown}" if shown else ""))

    def _loaded(self, studies, path: str = "") -> None:
        """A worker loaded ``studies``: show them (or say why not, leaving the study on screen)."""
        from hlip_engine.study import StudyLoadError

        try:
            self.add_studies(studies)
        except StudyLoadError as e:
            self.screen.fail(str(e) if path and path in str(e) else f"Could not open {path}: {e}")

    def add_studies(self, studies) -> list:
        """Show the study (first scan shown, the others ticked off), closing the one on screen; in compare
        mode it opens beside the open study instead. Returns the layers added to the viewer."""
        studies = list(studies)
        if self.compare.isChecked() and self.study is not None and studies and studies[0] is not self.study:
            if not any(s.scans for s in studies):
                from hlip_engine.study import StudyLoadError

                from .._show import why_empty

                raise StudyLoadError(f"no image scans to show ({why_empty(studies)})")
            self.compare_widget().show_study(studies[0])
            self.screen.set_prior(studies[0])
            self.refresh()
            self._show_header(self.study)  # the header of the study on screen, not "Opening …"
            return []
        return show_study(self.viewer, studies)

    def _set_busy(self, busy: bool) -> None:
        self.open_button.setEnabled(not busy)
        self.file_button.setEnabled(not busy)

    # --- mirroring the viewer ------------------------------------------------------------------
    def _schedule_refresh(self, *_args) -> None:
        # during a study switch the layers come and go: the table renders once, on study_changed
        if not self._updating and not self.screen.switching:
            self.refresh()

    def refresh(self) -> None:
        """Rebuild both tables from the viewer's layers of the open study."""
        study = open_study(self.viewer)
        layers = scan_layers(self.viewer, study) if study is not None else []
        self._show_window_of(self.viewer.layers.selection.active)
        if study is self.study and layers == self._layers:
            self._sync_checks()
            return
        self.study, self._layers = study, layers
        self._updating = True
        try:
            self._fill(study, layers)
        finally:
            self._updating = False

    def _show_findings(self, study) -> None:
        """HLIP findings already filed with the study (an SR of `hlip report` / Save to PACS among its files),
        newest first: what the model said, when, and that it is an unverified research result."""
        self.findings.setVisible(False)
        self.findings.setText("")
        if study is None:
            return
        stored = filed_findings(study)
        if not stored:
            return
        latest = stored[0]
        date = latest.get("content_date", "")[:8]
        when = f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 else "undated"
        ranked = sorted(latest["findings"].items(), key=lambda kv: -kv[1])
        lines = ", ".join(f"{name} {p:.0%}" for name, p in ranked[:6])
        peaks = "; ".join(f"“{r['prompt']}” peak at ({', '.join(f'{v:.0f}' for v in r['peak_lps'])}) mm LPS"
                          for r in latest["relevance"] if r.get("peak_lps"))
        text = (f"<b>HLIP findings filed with this study</b> ({when}, model {latest.get('model') or '?'}, "
                f"{latest.get('verification') or 'UNVERIFIED'}; research result, not a diagnosis):<br>"
                + (lines or "no findings") + (f"<br>{peaks}" if peaks else "")
                + (f"<br>{len(stored) - 1} earlier report(s) filed" if len(stored) > 1 else ""))
        self.findings.setText(text)
        self.findings.setVisible(True)

    def _fill(self, study, layers) -> None:
        self._show_findings(study)
        self.table.setRowCount(0)
        self.skipped.setRowCount(0)
        if study is None:
            self.skipped_box.setVisible(False)
            self.title.setText("No study open. Open a folder, drop one on the viewer, or File ▸ Open Sample "
                               "▸ HLIP Explorer.")
            self.skipped_box.setTitle("Skipped while loading")
            return
        self._show_header(study)
        self._fill_windows(study.modality)
        for layer in layers:
            self._widen_range(layer)
            scan = study.scans[layer.metadata[SCAN_KEY]]
            row = self.table.rowCount()
            self.table.insertRow(row)
            show = QTableWidgetItem()
            show.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            show.setCheckState(Qt.CheckState.Checked if layer.visible else Qt.CheckState.Unchecked)
            show.setIcon(thumbnail(scan.voxels, tuple(layer.contrast_limits)))
            cells = [show, QTableWidgetItem("" if scan.series_number is None else str(scan.series_number)),
                     QTableWidgetItem(scan.description), QTableWidgetItem(scan.modality),
                     QTableWidgetItem("×".join(str(s) for s in scan.shape) + "\n" + _spacing_text(scan.spacing)),
                     QTableWidgetItem(scan.orientation)]
            notes = scan_warnings(scan)
            cells[2].setToolTip(f"{layer.name}\n{scan.source}\ncontrast: {layer.metadata.get('contrast', '')}"
                                + "".join(f"\nloader: {w}" for w in notes))
            if notes:  # the loader filled, resampled or cut this scan: say so on its row
                cells[2].setText(scan.description + "".join(f"\n⚠ {w}" for w in notes))
                for cell in cells:
                    cell.setBackground(QBrush(WARNING_BRUSH))
            cells[4].setToolTip("slices x rows x columns, and the slice x row x column spacing in mm")
            for col, item in enumerate(cells):
                self.table.setItem(row, col, item)
            follow(self, layer.events.visible, self._sync_checks)
        self.skipped_box.setTitle(f"Skipped while loading ({len(study.skipped)})")
        self.skipped_box.setVisible(bool(study.skipped))
        for item, reason in study.skipped:
            row = self.skipped.rowCount()
            self.skipped.insertRow(row)
            self.skipped.setItem(row, 0, QTableWidgetItem(_short(str(item), study.source)))
            self.skipped.setItem(row, 1, QTableWidgetItem(str(reason)))
            self.skipped.item(row, 0).setToolTip(str(item))
            self.skipped.item(row, 1).setToolTip(str(reason))
        self.table.resizeRowsToContents()  # rows with loader warnings take the lines they need
        for row in range(self.table.rowCount()):  # and every row keeps room for its thumbnail
            self.table.setRowHeight(row, max(self.table.rowHeight(row), THUMB + 4))
        self.skipped.resizeColumnToContents(0)
        self.skipped.setColumnWidth(0, min(self.skipped.columnWidth(0), 220))

    def _show_header(self, study) -> None:
        if study is None:
            return
        header = study_header(study, identifiers=self.identifiers.isChecked()).replace("\n", "<br>")
        noted = sum(1 for scan in study.scans if scan_warnings(scan))
        extra = f", <span style='color:#f0b040'>⚠ {noted} changed by the loader</span>" if noted else ""
        self.title.setText(f"<b>{header}</b><br>{len(study.scans)} scans, {len(study.skipped)} skipped{extra}")

    def _fill_windows(self, modality: str) -> None:
        """CT presets (HU) for CT only; MR gets its percentile auto-contrast."""
        ct = (modality or "").upper() == "CT"
        if getattr(self, "_windows_for", None) == ct:
            return
        self._windows_for = ct
        self.window.clear()
        if ct:
            for name, p in window_presets().items():
                self.window.addItem(f"CT {name}  (W {p['width']:g} / L {p['level']:g})", name)
        self.window.addItem(MR_AUTO if not ct else "auto (0.5-99.5 %)", MR_AUTO)

    def _compare_toggled(self, on: bool) -> None:
        widget = getattr(self, "_compare", None)
        if not on and widget is not None:  # back to one patient on screen
            if widget.canvas.qt_viewer is not None:
                widget.canvas.model.layers.clear()
            widget.parentWidget().hide()
            self.screen.set_prior(None)

    def compare_widget(self):
        """The compare canvas, docked beside the viewer (once)."""
        widget = getattr(self, "_compare", None)
        if widget is None:
            from .hanging import CompareWidget

            widget = self._compare = CompareWidget(self.viewer)
            self.viewer.window.add_dock_widget(widget, name="Compare", area="right", tabify=True)
        widget.parentWidget().show()
        widget.parentWidget().raise_()
        return widget

    def hang_3up(self):
        """Dock the 3-up hanging (once); returns its widget."""
        hanging = getattr(self, "_hanging", None)
        if hanging is not None and hanging[1].canvases["coronal"].qt_viewer is not None:
            hanging[0].show()
            hanging[0].raise_()
            return hanging[1]
        dock, widget = self.viewer.window.add_plugin_dock_widget("hlip-napari", "3-up hanging", tabify=True)
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()
        dock.raise_()  # tabbed with the other docks, in front: the planes need the height
        self._hanging = (dock, widget)
        return widget

    def add_ruler(self):
        """A ruler layer for the open study: draw lines, each labelled with its length in mm."""
        return add_ruler(self.viewer, open_study(self.viewer))

    def _show_window_of(self, layer) -> None:
        """Let the window box name the active scan's window (CT preset or MR auto)."""
        metadata = getattr(layer, "metadata", None) or {}
        if WINDOW_KEY not in metadata:
            return
        i = self.window.findData(metadata[WINDOW_KEY] or MR_AUTO)
        if i >= 0:
            self.window.setCurrentIndex(i)

    @staticmethod
    def _widen_range(layer) -> None:
        """Let the contrast slider span the scan's values, not just its opening window."""
        lo, hi = layer.metadata.get("value_range", layer.contrast_limits)
        cl = layer.contrast_limits
        layer.contrast_limits_range = (min(lo, cl[0]), max(hi, cl[1]))

    def _sync_checks(self, *_args) -> None:
        self._updating = True
        try:
            for row, layer in enumerate(self._layers):
                item = self.table.item(row, 0)
                if item is not None:
                    item.setCheckState(Qt.CheckState.Checked if layer.visible else Qt.CheckState.Unchecked)
        finally:
            self._updating = False

    # --- actions ---------------------------------------------------------------------------------
    def _item_changed(self, item) -> None:
        if self._updating or item.column() != 0 or item.row() >= len(self._layers):
            return
        self._layers[item.row()].visible = item.checkState() == Qt.CheckState.Checked

    def _row_selected(self) -> None:
        if self._updating:
            return
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        chosen = [self._layers[r] for r in rows if r < len(self._layers)]
        if chosen:
            self._updating = True
            try:
                self.viewer.layers.selection.clear()
                self.viewer.layers.selection.update(chosen)
                self.viewer.layers.selection.active = chosen[0]
            finally:
                self._updating = False

    def _show_only(self, row: int, _col: int = 0) -> None:
        """Double-click: this scan alone, as a radiologist flips through series."""
        for i, layer in enumerate(self._layers):
            layer.visible = i == row
        self._sync_checks()

    def selected_layers(self) -> list:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        chosen = [self._layers[r] for r in rows if r < len(self._layers)]
        return chosen or [layer for layer in self._layers if layer.visible]

    def apply_window(self, name: str, layers=None) -> None:
        """Set a CT preset (HU) or MR percentile auto-contrast on the chosen scans."""
        for layer in layers if layers is not None else self.selected_layers():
            study = layer.metadata.get(STUDY_KEY)
            if name == MR_AUTO:
                limits = auto_limits(study.scans[layer.metadata[SCAN_KEY]].voxels)
            else:
                limits = window_limits(name)
            layer.contrast_limits_range = (min(layer.contrast_limits_range[0], limits[0]),
                                           max(layer.contrast_limits_range[1], limits[1]))
            layer.contrast_limits = limits
            layer.metadata[WINDOW_KEY] = None if name == MR_AUTO else name
            layer.metadata["contrast"] = contrast_text(layer.metadata[WINDOW_KEY])
