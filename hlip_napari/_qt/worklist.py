"""Worklist widget: the studies a local `hlip listen` received, most urgent first, refreshed live.

Reads the listener's worklist (``DIR/worklist.sqlite`` beside the index, read-only) every few seconds on a
QTimer; a STAT study is flagged (bold, red priority); double-clicking a study opens it in the viewer with
this plugin's reader. No patient identifiers are shown: the worklist holds none.
"""
from __future__ import annotations

import time
from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtGui import QBrush, QColor, QFont
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

COLUMNS = ("Priority", "Status", "Arrived", "Mod.", "Finding", "Score", "Description", "Study UID")
REFRESH_MS = 3000
STAT = "STAT"


class WorklistWidget(QWidget):
    def __init__(self, napari_viewer, parent=None, *, index_dir: str | None = None, refresh_ms: int = REFRESH_MS):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.rows: list[dict] = []
        self.folder = QLineEdit(index_dir or "")
        self.folder.setPlaceholderText("index folder of hlip listen (holds worklist.sqlite)")
        self.folder.editingFinished.connect(self.refresh)
        browse = QPushButton("...")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse)
        top = QHBoxLayout()
        top.addWidget(self.folder)
        top.addWidget(browse)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.cellDoubleClicked.connect(self.open_row)
        self.status = QLabel("")
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.table)
        layout.addWidget(self.status)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(int(refresh_ms))
        self.refresh()

    def _browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "Index folder of hlip listen", self.folder.text())
        if chosen:
            self.folder.setText(chosen)
            self.refresh()

    def refresh(self) -> None:
        """Re-read the worklist (cheap: one indexed query); keeps the selected study selected."""
        from hlip_engine.triage.worklist import Worklist, worklist_path

        text = self.folder.text().strip()
        if not text:
            self.status.setText("choose the index folder a listener writes to")
            return
        try:
            with Worklist(worklist_path(text), readonly=True) as wl:
                rows = wl.rows()
        except (OSError, ValueError) as e:
            self.status.setText(str(e))
            return
        except Exception as e:  # noqa: BLE001 - a locked or half-created database: try again next tick
            self.status.setText(f"cannot read the worklist yet ({type(e).__name__})")
            return
        selected = self.selected_uid()
        self.rows = rows
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            when = time.strftime("%H:%M:%S", time.localtime(r["arrived_at"]))
            score = f"{r['score']:.2f}" if r["score"] is not None else ""
            status = r["status"] + (f": {r['reason']}" if r["status"] == "failed" else "")
            values = (r["priority"] or "-", status, when, r["modality"], r["finding"], score, r["description"],
                      r["study_uid"])
            stat = r["priority"] == STAT
            for j, v in enumerate(values):
                item = QTableWidgetItem(str(v))
                if stat:
                    font = QFont()
                    font.setBold(True)
                    item.setFont(font)
                    if j == 0:
                        item.setForeground(QBrush(QColor("#e04040")))
                self.table.setItem(i, j, item)
            if r["study_uid"] == selected:
                self.table.selectRow(i)
        n_stat = sum(r["priority"] == STAT for r in rows)
        self.status.setText(f"{len(rows)} studies, {n_stat} STAT; updated {time.strftime('%H:%M:%S')}")

    def selected_uid(self) -> str | None:
        items = self.table.selectedItems()
        if not items:
            return None
        row = items[0].row()
        return self.rows[row]["study_uid"] if row < len(self.rows) else None

    def open_row(self, row: int, _column: int = 0) -> None:
        """Open the study of ``row`` in the viewer (this plugin's reader)."""
        if not 0 <= row < len(self.rows):
            return
        path = self.rows[row]["path"]
        if not path or not Path(path).exists():
            self.status.setText(f"study {self.rows[row]['study_uid']} is not on disk (yet)")
            return
        self.viewer.open(path, plugin="hlip-napari")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.timer.stop()
        super().closeEvent(event)

