"""Search studies: free text (or the open study) -> the closest studies of an index, ranked.

The work is the chosen engine's (:func:`hlip_napari._engine.current_engine`): this computer, where the
model and the index stay loaded (:mod:`hlip_napari._session`), so after the first query a search is one
text encoding plus one FAISS lookup, tens of milliseconds, off the Qt thread; or a server (``hlip serve``),
which searches its own index. Both answer the ``hlip search --json`` document.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .. import _engine
from .._session import ENGINE, SETTINGS
from .._view import open_study_or_warn, unwrap
from .jobs import Job, follow
from .model_panel import ModelBox

COLUMNS = ("Score", "Date", "Mod.", "Description", "Impression", "Age/Sex", "Scans")
IMPRESSION_COLUMN = 4
DESCRIPTION_COLUMN = 3
SCORE_TIP = ("Score: cosine similarity between the query's embedding and the study's (1 = the same direction).\n"
             "It ranks studies for this query; it is not a probability, and scores of different queries "
             "do not compare.")
WRAP_ROWS = 50
THUMB = 48  # px: the hit's thumbnail beside its description
THUMB_ROWS = 100  # hits given a thumbnail (the first ones: the ones a reader looks at)
PICK = "Pick an index and a model, type a description, press Enter."
PICK_SERVER = "Type a description, press Enter: the server searches its own index."
MODALITIES = ("any", "MR", "CT", "PT", "CR", "DX", "US")


def _field(row: dict, *names, default=""):
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    return default


def _date(text: str) -> str:
    text = str(text)
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _age_sex(row: dict) -> str:
    age, sex = row.get("age"), str(row.get("sex") or row.get("patient_sex") or "")
    return " ".join(x for x in (f"{age} y" if age not in (None, "") else "", sex) if x)


def thumbnails_job(rows: list[dict]):
    """Worker: (row, uint8 image) for each hit whose study is a folder or file on this computer (the middle
    image of its largest series; hlip_engine.io.thumbnails), as they are read."""
    from hlip_engine.io.thumbnails import study_thumbnail

    for r, row in enumerate(rows):
        path = str(_field(row, "path", "source") or "")
        if path and Path(path).exists():
            image = study_thumbnail(path, THUMB)
            if image is not None:
                yield r, image


def search_job(settings, index_path: str, query, k: int, filters: dict | None = None, engine_settings=None):
    """Worker: the chosen engine's search for ``query`` (text, or a Study for "more like this", never
    returned itself) -> ranked rows, parsed from the ``hlip search --json`` document."""
    engine = _engine.current_engine(settings, engine_settings)
    yield from engine.warm_up(index_path, index=True)
    yield "searching"
    return parse_hits(engine.search(query, k=k, index_path=index_path or None, **(filters or {})))


def parse_hits(doc: dict) -> dict:
    """The ``hlip search --json`` document -> {scores, rows (each hit's metadata), seconds, size}."""
    hits = doc.get("hits") or []
    return {"scores": [float(h["score"]) for h in hits],
            "rows": [{key: value for key, value in h.items() if key != "score"} for h in hits],
            "seconds": float(doc.get("seconds") or 0.0), "size": int(doc.get("size") or 0)}


def open_job(hit, settings=None, engine_settings=None):
    """Worker: a hit's study, loaded, through the chosen engine's ``open_hit``. ``hit`` is an index row (or a
    path). On this computer it opens from its path; a hit of an index built from a PACS (``hlip index build
    NODE``) whose folder is gone is retrieved from its node first. With a server, whose hits name folders on
    the server, the study is downloaded into the plugin's cache (once: a later open reuses it)."""
    from .._reader import load_studies

    hit = {"path": hit} if isinstance(hit, str) else dict(hit)
    engine = _engine.current_engine(settings, engine_settings)
    path = str(_field(hit, "path", "source") or "")
    if engine.kind == "server":
        yield f"downloading study {hit.get('study_uid') or path} from {engine.url}"
    elif hit.get("node") and hit.get("study_uid") and not (path and Path(path).exists()):
        yield f"retrieving the study from {hit['node']}"
    path = str(engine.open_hit(hit))
    yield f"reading {path}"
    return load_studies(path)


class SearchWidget(QWidget):
    """Docked search. ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.rows: list[dict] = []
        self.scores: list[float] = []
        self.job = Job("Search")
        self.open = Job("Open study")
        self.model_box = ModelBox()

        self.index_edit = QLineEdit(SETTINGS.settings.index)
        self.index_edit.setPlaceholderText("study index folder (hlip index build LIBRARY --index DIR)")
        self.index_edit.editingFinished.connect(lambda: self.set_index(self.index_edit.text().strip()))
        browse = QToolButton()
        browse.setText("…")
        browse.clicked.connect(self._browse_index)
        self.index_browse = browse
        index_row = QHBoxLayout()
        index_row.addWidget(QLabel("Index"))
        index_row.addWidget(self.index_edit, 1)
        index_row.addWidget(browse)

        self.query = QLineEdit()
        self.query.setPlaceholderText("Describe what you look for, then Enter, e.g. acute left MCA stroke")
        self.query.setClearButtonEnabled(True)
        self.query.returnPressed.connect(self.search)
        self.k = QSpinBox()
        self.k.setRange(1, 500)
        self.k.setValue(20)
        self.k.setPrefix("top ")

        self.like_button = QPushButton("More like the open study")
        self.like_button.setToolTip("Find the studies whose embedding is closest to the study shown in the viewer")
        self.like_button.clicked.connect(self.more_like_this)
        buttons, self.cancel_button = self.job.buttons(self.like_button, self.k)
        self.modality = QComboBox()
        self.modality.addItems(MODALITIES)
        self.modality.setToolTip("Only studies of this modality (as `hlip search --modality`)")
        self.date_from = QLineEdit()
        self.date_from.setPlaceholderText("from YYYY-MM-DD")
        self.date_to = QLineEdit()
        self.date_to.setPlaceholderText("to YYYY-MM-DD")
        self.identifiers = QCheckBox("Accession")
        self.identifiers.setToolTip("Show the accession number (only in indexes built with --keep-identifiers)")
        self.identifiers.toggled.connect(lambda _on: self.show_results(self._last) if self._last else None)
        filters = QHBoxLayout()
        filters.addWidget(QLabel("Modality"))
        filters.addWidget(self.modality)
        filters.addWidget(self.date_from, 1)
        filters.addWidget(self.date_to, 1)
        filters.addWidget(self.identifiers)
        self._last = None
        self._thumbs = None  # the thumbnail worker of the results shown
        self.thumbnails: dict[int, np.ndarray] = {}  # row -> the image shown beside its description

        self.status = QLabel(PICK)
        self.status.setWordWrap(True)
        self.job.on_cancel(lambda: self.status.setText("Cancelled."))
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setIconSize(QSize(THUMB, THUMB))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(IMPRESSION_COLUMN, QHeaderView.ResizeMode.Stretch)
        self.table.setToolTip("Double-click a study to open it")
        self.table.horizontalHeaderItem(0).setToolTip(SCORE_TIP)
        self.table.setWordWrap(True)
        self.setMinimumWidth(560)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_result(row))

        self._show_engine(ENGINE.settings)
        follow(self, ENGINE.changed, self._show_engine)

        layout = QVBoxLayout(self)
        layout.addWidget(self.model_box)
        layout.addLayout(index_row)
        layout.addWidget(self.query)
        layout.addLayout(buttons)
        layout.addLayout(filters)
        layout.addWidget(self.status)
        layout.addWidget(self.table, 1)

    # --- inputs ----------------------------------------------------------------------------------
    def _show_engine(self, e) -> None:
        """A server searches its own index: the index row is this computer's only."""
        local = e.kind != "server"
        self.index_edit.setEnabled(local)
        self.index_browse.setEnabled(local)
        self.index_edit.setToolTip("" if local else "The server searches its own index (hlip serve --index)")
        if not self.rows and self.status.text() in (PICK, PICK_SERVER):
            self.status.setText(PICK if local else PICK_SERVER)

    def _browse_index(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Study index folder", self.index_edit.text())
        if path:
            self.set_index(path)

    def set_index(self, path: str) -> None:
        self.index_edit.setText(path)
        SETTINGS.update(index=path)

    # --- actions ---------------------------------------------------------------------------------
    def search(self, text: str | None = None):
        """Free-text search (the query box's text by default)."""
        text = self.query.text() if text is None else text
        if text != self.query.text():
            self.query.setText(text)
        if not text.strip():
            self.status.setText("Type a description first, e.g. <i>left frontal mass with surrounding oedema</i>.")
            return None
        return self._run(text, f"“{text.strip()}”")

    def more_like_this(self):
        study = open_study_or_warn(
            self.viewer, "No study is open: open one (Study browser or double-click a result) first.")
        if study is None:
            return None
        return self._run(study, f"studies like “{study.description or study.uid}”")

    def _run(self, query, what: str):
        self.status.setText(f"Searching {what} …")
        self._asked = time.perf_counter()
        settings, index = self.model_box.settings(), self.index_edit.text().strip()
        engine_settings = self.model_box.engine_settings()
        loaded = _engine.ready(settings, engine_settings, index)
        return self.job.start(search_job, settings, index, query, self.k.value(), self.filters(), engine_settings,
                              steps=3, progress=not (loaded and isinstance(query, str)),
                              on_done=lambda r: self.show_results(r, what),
                              on_error=lambda _e: self.status.setText("Search failed (see the notification)."))

    def filters(self) -> dict:
        """The modality and date filters as `hlip search` takes them."""
        out = {}
        if self.modality.currentText() != "any":
            out["modality"] = self.modality.currentText()
        for key, edit in (("date_from", self.date_from), ("date_to", self.date_to)):
            if edit.text().strip():
                out[key] = edit.text().strip()
        return out

    def show_results(self, result: dict, what: str | None = None) -> None:
        if what is None:
            what = getattr(self, "_what", "")
        self._last, self._what = result, what
        self.rows, self.scores = result["rows"], result["scores"]
        self.thumbnails = {}
        accession = self.identifiers.isChecked()
        table = self.table
        header = table.horizontalHeader()
        # per-cell ResizeToContents re-measures every column on every insert: fill first, measure once
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        table.setUpdatesEnabled(False)
        try:
            table.setRowCount(len(self.rows))
            for r, (score, row) in enumerate(zip(self.scores, self.rows)):
                n = _field(row, "n_scans", "scan_count", "scans")
                description = str(_field(row, "description", "study_description", default="(no description)"))
                if accession and row.get("accession"):
                    description += f"  [acc. {row['accession']}]"
                impression = str(row.get("impression") or "")
                cells = [f"{score:.3f}", _date(_field(row, "date", "study_date")), str(_field(row, "modality")),
                         description, impression or "—", _age_sex(row), str(n)]
                tip = str(_field(row, "path", "source"))
                for c, text in enumerate(cells):
                    item = QTableWidgetItem(text)
                    if c in (0, 6):
                        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    item.setToolTip(SCORE_TIP if c == 0 else (f"Impression: {impression}\n{tip}" if impression
                                                                else f"{tip}\n(no report known for this study)"))
                    table.setItem(r, c, item)
            for c in (0, 1, 2, 5, 6):
                table.resizeColumnToContents(c)
            table.setColumnWidth(3, max(100, min(table.sizeHintForColumn(3), 150)) + THUMB + 4)
            header.setSectionResizeMode(IMPRESSION_COLUMN, QHeaderView.ResizeMode.Stretch)
            if len(self.rows) <= WRAP_ROWS:  # impressions wrap onto a second line; measuring 500 rows would stall
                table.resizeRowsToContents()
        finally:
            table.setUpdatesEnabled(True)
        total = (time.perf_counter() - self._asked) * 1000 if hasattr(self, "_asked") else 0
        self.last_ms = total
        self._start_thumbnails()
        self.status.setText(f"{len(self.rows)} of {result['size']:,} studies for {what} "
                            f"({result['seconds'] * 1000:.0f} ms search, {total:.0f} ms in all). "
                            "Double-click to open.")

    # --- thumbnails: one image per hit, read in a worker after the table is shown --------------------------
    def _start_thumbnails(self) -> None:
        if self._thumbs is not None:
            self._thumbs.quit()
        rows = list(self.rows[:THUMB_ROWS])
        if not rows:
            self._thumbs = None
            return
        from napari.qt.threading import create_worker

        worker = create_worker(thumbnails_job, rows, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(lambda item, rows=rows: self._set_thumbnail(rows, *item))
        self._thumbs = worker
        self.destroyed.connect(worker.quit)
        worker.start()

    def _set_thumbnail(self, rows: list, r: int, image: np.ndarray) -> None:
        if r >= len(self.rows) or self.rows[r] is not rows[r]:  # results changed meanwhile
            return
        try:
            item = self.table.item(r, DESCRIPTION_COLUMN)
        except RuntimeError:  # the widget was closed while the thumbnails were read
            if self._thumbs is not None:
                self._thumbs.quit()
            return
        if item is None:
            return
        image = np.ascontiguousarray(image)
        qimg = QImage(image.data, image.shape[1], image.shape[0], image.strides[0], QImage.Format.Format_Grayscale8)
        pixmap = QPixmap.fromImage(qimg.copy()).scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio,
                                                       Qt.TransformationMode.SmoothTransformation)
        item.setIcon(QIcon(pixmap))
        if self.table.rowHeight(r) < THUMB + 4:
            self.table.setRowHeight(r, THUMB + 4)
        self.thumbnails[r] = image

    def open_result(self, row: int):
        """Open a result study (loaded in a worker) into the viewer."""
        if not 0 <= row < len(self.rows):
            return None
        hit = self.rows[row]
        path = str(_field(hit, "path", "source") or "")
        engine_settings = self.model_box.engine_settings()
        server = engine_settings.kind == "server"
        if server and not hit.get("study_uid"):
            from napari.utils.notifications import show_warning

            show_warning("This search hit has no StudyInstanceUID to ask the server for; open it from a folder.")
            return None
        if not server and not path and not hit.get("node"):
            from napari.utils.notifications import show_warning

            show_warning("This index row has no study path; rebuild the index with `hlip index build`.")
            return None
        if server:
            where = f"{hit.get('study_uid')} from {engine_settings.url}"
        elif path and (not hit.get("node") or Path(path).exists()):
            where = path
        else:
            where = f"{hit.get('study_uid')} from {hit.get('node')}"
        self.status.setText(f"Opening {where} …")
        return self.open.start(open_job, hit, self.model_box.settings(), engine_settings, steps=2,
                               on_done=lambda studies: self._opened(studies, where),
                               on_error=lambda _e: self.status.setText(f"Opening {where} failed (see the "
                                                                       "notification)."))

    def _opened(self, studies, path: str) -> None:
        """Show the hit's study (closing the one on screen), or say why not, leaving it on screen."""
        from hlip_engine.study import StudyLoadError

        from .._on_screen import on_screen
        from .._show import show_study

        try:
            show_study(self.viewer, studies)
        except StudyLoadError as e:
            on_screen(unwrap(self.viewer)).fail(f"Could not open {path}: {e}")
            self.status.setText(f"Could not open {path}: {e}")
            return
        self.status.setText(f"Opened {path}")
