"""PACS widget: choose a node, query it with filters, retrieve a study (per-series progress, cancel), then
open it in the Study browser.

The engine does all the work (:mod:`hlip_engine.pacs`); this widget only runs it in thread workers. Patient
identifiers show only when "Show patient" is ticked, and never reach a log.
"""
from __future__ import annotations

import json
import threading

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .jobs import Job

COLUMNS = ("Date", "Mod.", "Description", "Series", "Images")
PATIENT_COLUMNS = ("Patient ID", "Name", "Accession")
THUMB = 48  # px
MAX_THUMBS = 50  # studies per search that get a thumbnail
MODALITIES = ("", "CT", "MR", "PT", "NM", "CR", "DX", "MG", "US", "XA")


class Progress(str):
    """A progress message that also carries the engine's event (the activity bar shows the text)."""

    event: dict

    def __new__(cls, text: str, event: dict):
        obj = super().__new__(cls, text)
        obj.event = event
        return obj


def _state_path():
    from hlip_engine.pacs.nodes import config_dir

    return config_dir() / "pacs_widget.json"


def _load_state() -> dict:
    try:
        state = json.loads(_state_path().read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_state(state: dict) -> None:
    from hlip_engine.atomic import atomic_write_json

    try:
        atomic_write_json(_state_path(), state)
    except OSError:
        pass


def _date(d: str) -> str:
    return f"{d[:4]}-{d[4:6]}-{d[6:]}" if len(d) == 8 and d.isdigit() else d


def echo_job(node: str):
    yield "C-ECHO / QIDO-RS"
    from hlip_engine.pacs import connect

    with connect(node) as pacs:
        return pacs.echo()


def find_job(node: str, filters: dict, include_patient: bool):
    yield "querying"
    from hlip_engine.pacs import connect

    with connect(node) as pacs:
        return pacs.find_studies(include_patient=include_patient, **filters)


def thumbnails_job(node: str, study_uids: list[str], size: int = 64):
    """Worker: ``(study_uid, png bytes)`` per study the server can render (WADO-RS ``/rendered``)."""
    from hlip_engine.pacs import connect

    with connect(node) as pacs:
        if pacs.node.kind != "dicomweb":
            return 0
        n = 0
        for uid in study_uids:
            png = pacs.thumbnail(uid, size)
            if png:
                n += 1
                yield (uid, png)
        return n


def retrieve_job(node: str, study_uid: str, cancel: threading.Event, cache=None, interval: float = 0.05):
    """Worker: retrieve into the cache, yielding progress at most every ``interval`` seconds (and at the end of
    each series), so a fast transfer never floods the Qt thread with signals."""
    import time

    from hlip_engine.pacs import PacsCancelled, connect

    yield Progress("connecting", {})
    last = 0.0
    try:
        with connect(node) as pacs:
            gen = pacs.iter_retrieve(study_uid, cache, cancel=cancel)
            while True:
                try:
                    event = next(gen)
                except StopIteration as stop:
                    return {"path": str(stop.value)}
                now = time.monotonic()
                if now - last < interval and event["series_done"] < event["series_total"]:
                    continue
                last = now
                text = ("from the cache" if event["cached"] and not event["series_uid"] else
                        f"series {event['series_index'] + 1}/{event['n_series']}: "
                        f"{event['series_done']}/{event['series_total']} images")
                yield Progress(text, event)
    except PacsCancelled:
        return {"cancelled": True}


class PacsWidget(QWidget):
    """Docked PACS browser. ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.rows: list[dict] = []
        self.opened_path = ""
        self._cancel = threading.Event()
        self.query_job = Job("PACS query", on_busy=self._set_query_busy)
        self.retrieve_job = Job("PACS retrieve", on_busy=self._set_retrieve_busy)
        self.thumb_job = Job("PACS thumbnails")
        self.thumbnails: dict[str, bytes] = {}
        state = _load_state()

        self.node = QComboBox()
        self.node.setEditable(True)
        self.node.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.node.lineEdit().setPlaceholderText("https://host/dicom-web  or  dicom://AET@host:port  or a node name")
        self.node.setToolTip("A DICOMweb root, a DIMSE address (our AE title is HLIPX), or a name from "
                             "pacs_nodes.json. Passwords come from HLIP_PACS_PASSWORD / HLIP_PACS_TOKEN or the keyring.")
        for name in self._known_nodes(state):
            self.node.addItem(name)
        self.node.setCurrentText(state.get("node", ""))
        self.echo_button = QPushButton("Echo")
        self.echo_button.setToolTip("Check that the node answers")
        self.echo_button.clicked.connect(self.echo)
        node_row = QHBoxLayout()
        node_row.addWidget(QLabel("PACS"))
        node_row.addWidget(self.node, 1)
        node_row.addWidget(self.echo_button)

        self.patient_id = QLineEdit()
        self.patient_name = QLineEdit()
        self.patient_name.setPlaceholderText("DOE^JANE, wildcards * ?")
        self.accession = QLineEdit()
        self.modality = QComboBox()
        self.modality.addItems(MODALITIES)
        self.date_from = QLineEdit()
        self.date_from.setPlaceholderText("YYYY-MM-DD")
        self.date_to = QLineEdit()
        self.date_to.setPlaceholderText("YYYY-MM-DD")
        self.description = QLineEdit()
        self.description.setPlaceholderText("a part of the study description")
        dates = QHBoxLayout()
        dates.addWidget(self.date_from)
        dates.addWidget(QLabel("to"))
        dates.addWidget(self.date_to)
        form = QFormLayout()
        form.addRow("Patient ID", self.patient_id)
        form.addRow("Patient name", self.patient_name)
        form.addRow("Accession", self.accession)
        form.addRow("Modality", self.modality)
        form.addRow("Study date", dates)
        form.addRow("Description", self.description)
        for edit in (self.patient_id, self.patient_name, self.accession, self.date_from, self.date_to,
                     self.description):
            edit.returnPressed.connect(self.search)

        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        self.show_patient = QCheckBox("Show patient")
        self.show_patient.setToolTip("Show patient ID, name and accession number in the results")
        search_row = QHBoxLayout()
        search_row.addWidget(self.search_button, 1)
        search_row.addWidget(self.show_patient)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setToolTip("Double-click a study to retrieve and open it")
        self.table.cellDoubleClicked.connect(lambda row, _c: self.retrieve(row))

        self.retrieve_button = QPushButton("Retrieve and open")
        self.retrieve_button.clicked.connect(lambda: self.retrieve())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        retrieve_row = QHBoxLayout()
        retrieve_row.addWidget(self.retrieve_button, 1)
        retrieve_row.addWidget(self.cancel_button)
        self.series_progress = QProgressBar()
        self.series_progress.setFormat("%v / %m images")
        self.series_progress.setValue(0)
        self.status = QLabel("Choose a PACS node, set filters, press Search.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addLayout(node_row)
        layout.addLayout(form)
        layout.addLayout(search_row)
        layout.addWidget(self.table, 1)
        layout.addLayout(retrieve_row)
        layout.addWidget(self.series_progress)
        layout.addWidget(self.status)
        self.setMinimumWidth(440)

    # --- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def _known_nodes(state: dict) -> list[str]:
        try:
            from hlip_engine.pacs import load_nodes

            names = sorted(load_nodes())
        except Exception:  # a broken nodes file shows its error when used, not when the widget opens
            names = []
        recent = [n for n in state.get("recent", []) if isinstance(n, str) and n not in names]
        return names + recent

    def node_text(self) -> str:
        return self.node.currentText().strip()

    def _remember_node(self) -> None:
        node = self.node_text()
        state = _load_state()
        recent = [node] + [n for n in state.get("recent", []) if n != node]
        state.update(node=node, recent=recent[:10])
        _save_state(state)
        if self.node.findText(node) < 0:
            self.node.addItem(node)

    def filters(self) -> dict:
        return {"patient_id": self.patient_id.text(), "patient_name": self.patient_name.text(),
                "accession": self.accession.text(), "modality": self.modality.currentText(),
                "date_from": self.date_from.text(), "date_to": self.date_to.text(),
                "description": self.description.text()}

    def _set_query_busy(self, busy: bool) -> None:
        self.search_button.setEnabled(not busy)
        self.echo_button.setEnabled(not busy)

    def _set_retrieve_busy(self, busy: bool) -> None:
        self.retrieve_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    # --- actions ---------------------------------------------------------------------------------
    def echo(self):
        node = self.node_text()
        if not node:
            self.status.setText("Type a PACS node first.")
            return None
        self.status.setText(f"Echo {node} …")
        return self.query_job.start(echo_job, node, steps=1, progress=False,
                                    on_done=lambda s: self.status.setText(f"{node} answers ({s * 1000:.0f} ms)."),
                                    on_error=lambda e: self.status.setText(f"No answer: {e}"))

    def search(self):
        node = self.node_text()
        if not node:
            self.status.setText("Type a PACS node first.")
            return None
        self._remember_node()
        self.status.setText(f"Searching {node} …")
        return self.query_job.start(find_job, node, self.filters(), self.show_patient.isChecked(), steps=1,
                                    progress=False, on_done=self.show_results,
                                    on_error=lambda e: self.status.setText(f"Search failed: {e}"))

    def show_results(self, rows: list[dict]) -> None:
        self.rows = rows
        patient = bool(rows) and "patient_id" in rows[0]
        columns = (PATIENT_COLUMNS if patient else ()) + COLUMNS
        table = self.table
        table.setUpdatesEnabled(False)
        try:
            table.clear()
            table.setColumnCount(len(columns))
            table.setHorizontalHeaderLabels(columns)
            table.setRowCount(len(rows))
            for r, row in enumerate(rows):
                cells = ([row["patient_id"], row["patient_name"], row["accession"]] if patient else []) + [
                    _date(row["date"]), row["modality"], row["description"] or "(no description)",
                    str(row["series"]), str(row["instances"])]
                for c, text in enumerate(cells):
                    item = QTableWidgetItem(text)
                    item.setToolTip(row["study_uid"])
                    if columns[c] in ("Series", "Images"):
                        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    table.setItem(r, c, item)
            table.resizeColumnsToContents()
            table.horizontalHeader().setSectionResizeMode(columns.index("Description"), QHeaderView.ResizeMode.Stretch)
        finally:
            table.setUpdatesEnabled(True)
        if rows:
            table.selectRow(0)
            table.setIconSize(QSize(THUMB, THUMB))
            self._fetch_thumbnails()
        self.status.setText(f"{len(rows)} studies on {self.node_text()}. Double-click one to retrieve and open it.")

    def _fetch_thumbnails(self) -> None:
        """Thumbnails where the server renders them (DICOMweb), for the first rows, in the background."""
        node = self.node_text()
        if not node.lower().startswith(("http://", "https://")) and "://" in node:
            return
        uids = [r["study_uid"] for r in self.rows[:MAX_THUMBS]]
        worker = self.thumb_job.start(thumbnails_job, node, uids, THUMB, steps=1, progress=False,
                                      on_done=lambda _n: None, on_error=lambda _e: None)
        worker.yielded.connect(self._set_thumbnail)

    def _set_thumbnail(self, item) -> None:
        from qtpy.QtGui import QIcon, QPixmap

        uid, png = item
        self.thumbnails[uid] = png
        pix = QPixmap()
        if not pix.loadFromData(png, "PNG"):
            return
        col = self.table.columnCount() - len(COLUMNS)  # the Date column
        for r, row in enumerate(self.rows):
            if row["study_uid"] == uid and self.table.item(r, col) is not None:
                self.table.item(r, col).setIcon(QIcon(pix))
                self.table.setRowHeight(r, THUMB + 4)
                self.table.resizeColumnToContents(col)

    def retrieve(self, row: int | None = None):
        """Retrieve the selected (or given) study into the cache, then open it in the Study browser."""
        if row is None:
            picked = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
            row = picked[0].row() if picked else -1
        if not 0 <= row < len(self.rows):
            self.status.setText("Search, then pick a study first.")
            return None
        rec = self.rows[row]
        self._cancel = threading.Event()
        self.series_progress.setMaximum(max(1, rec["instances"]))
        self.series_progress.setValue(0)
        self.status.setText(f"Retrieving {rec['description'] or rec['study_uid']} …")
        worker = self.retrieve_job.start(retrieve_job, self.node_text(), rec["study_uid"], self._cancel,
                                         steps=1, progress=False,  # the widget's own bar counts images
                                         on_done=self._retrieved,
                                         on_error=lambda e: self.status.setText(f"Retrieve failed: {e}"))
        worker.yielded.connect(self._progress)
        return worker

    def cancel(self) -> None:
        """Stop the retrieve at the next image; the half-retrieved series is thrown away."""
        self._cancel.set()
        self.status.setText("Cancelling …")

    def _progress(self, msg) -> None:
        event = getattr(msg, "event", None) or {}
        if not event:
            return
        self.series_progress.setMaximum(max(1, event["total"]))
        self.series_progress.setValue(event["done"])
        self.status.setText(f"Retrieving: {msg}")

    def _retrieved(self, result: dict) -> None:
        if result.get("cancelled"):
            self.series_progress.setValue(0)
            self.status.setText("Retrieve cancelled; nothing half-retrieved was kept.")
            return
        self.opened_path = result["path"]
        self.status.setText(f"Retrieved into {result['path']}; opening in the Study browser …")
        worker = self.study_browser().open_path(result["path"])
        if worker is not None:
            worker.returned.connect(lambda _s, p=result["path"]: self.status.setText(f"Opened {p}"))

    def study_browser(self):
        """The docked Study browser (docked now if it is not yet)."""
        from .study_browser import StudyBrowser

        for widget in dict(self.viewer.window.dock_widgets).values():
            if isinstance(widget, StudyBrowser):
                return widget
        _dock, widget = self.viewer.window.add_plugin_dock_widget("hlip-napari", "Study browser", tabify=True)
        return widget
