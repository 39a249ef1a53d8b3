"""The "Model" box every model widget shows: where the engine runs, and its model; remembered.

*Engine* is "this computer" (checkpoint, text model folder, device: the model runs in napari) or "server"
(the URL of ``hlip serve`` and its token: the model and the index are the server's). All boxes edit the
same :data:`hlip_napari._session.SETTINGS` and ``ENGINE``, so a change in one widget changes the others,
and the choice survives a napari restart. The token is kept in the OS keyring (``_engine.save_token``),
never in a settings file.
"""
from __future__ import annotations

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QToolButton,
    QWidget,
)

from .. import _engine
from .._session import ENGINE, SETTINGS
from ..settings import DEVICES, ModelSettings
from .jobs import Job, follow

TOKEN_SAVED = "token saved (type to replace it)"
TOKEN_NONE = "the server's token (kept in the OS keyring)"


def _path_row(edit: QLineEdit, browse) -> QWidget:
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    button = QToolButton()
    button.setText("…")
    button.clicked.connect(browse)
    lay.addWidget(button)
    return row


def info_job(model_settings, engine_settings):
    """Worker: ask the chosen engine what it runs (the server's /v1/info; here, loading the model)."""
    yield "connecting"
    engine = _engine.current_engine(model_settings, engine_settings)
    info = engine.info()
    return engine.describe(), info


def describe_info(where: str, info: dict) -> str:
    """One line: the model (name, embedding size, device) and the index the engine answers with."""
    model = info.get("model") or {}
    text = f"{where}: model {model.get('name') or '?'}"
    if model.get("embedding_size"):
        text += f" ({model['embedding_size']}-d"
        text += f", {model['device']})" if model.get("device") else ")"
    index = info.get("index") or {}
    if index.get("size") is not None:
        text += f", index of {int(index['size']):,} studies"
    return text


class ModelBox(QGroupBox):
    """Engine (this computer / server) and the model: checkpoint / text model / device, or URL / token;
    saved on every edit."""

    def __init__(self, parent=None):
        super().__init__("Model", parent)
        self.engine = QComboBox()
        for kind in _engine.KINDS:
            self.engine.addItem(_engine.LABELS[kind], kind)
        self.engine.setToolTip("this computer: the model runs in napari (needs the engine: torch)\n"
                               "server: `hlip serve` on a GPU box answers (the model and the index are its own)")
        self.url = QLineEdit()
        self.url.setPlaceholderText("https://gpu-box:8400 (the address of `hlip serve`)")
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText(TOKEN_NONE)
        self.token.setToolTip("The bearer token of the server (ask whoever runs `hlip serve`); "
                              "kept in the OS keyring, never in a settings file")
        self.test_button = QPushButton("Test")
        self.test_button.setToolTip("Ask the server which model and index it serves")
        self.test_button.clicked.connect(self.test)
        self._saved_token: tuple[str, str] | None = None
        self.server_status = QLabel("")
        self.server_status.setWordWrap(True)
        self.info_job = Job("Engine test")
        self.info_job.on_cancel(lambda: self.server_status.setText("Cancelled."))

        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("HLIP checkpoint (.safetensors, official .pt, or model folder)")
        self.text_model = QLineEdit()
        self.text_model.setPlaceholderText("default: the text model the checkpoint names")
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.device.setToolTip("auto = CUDA when available (bf16), else CPU (fp32)")

        form = self.form = QFormLayout(self)
        form.addRow("Engine", self.engine)
        test_row = QWidget()
        lay = QHBoxLayout(test_row)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.server_status, 1)
        lay.addWidget(self.test_button)
        form.addRow("Server", self.url)
        form.addRow("Token", self.token)
        form.addRow("", test_row)
        self._server_rows = (self.url, self.token, test_row)
        self._local_rows = (_path_row(self.checkpoint, self._browse_checkpoint),
                            _path_row(self.text_model, self._browse_text), self.device)
        for label, row in zip(("Checkpoint", "Text model", "Device"), self._local_rows):
            form.addRow(label, row)

        self._show(SETTINGS.settings)
        self._show_engine(ENGINE.settings)
        self.checkpoint.editingFinished.connect(self._save)
        self.text_model.editingFinished.connect(self._save)
        self.device.currentTextChanged.connect(self._save)
        self.engine.currentIndexChanged.connect(self._save_engine)
        self.url.editingFinished.connect(self._save_engine)
        self.token.editingFinished.connect(self._save_token)
        follow(self, SETTINGS.changed, self._show)
        follow(self, ENGINE.changed, self._show_engine)

    # --- showing ---------------------------------------------------------------------------------
    def _show(self, s: ModelSettings) -> None:
        for widget in (self.checkpoint, self.text_model, self.device):
            widget.blockSignals(True)
        self.checkpoint.setText(s.checkpoint)
        self.text_model.setText(s.text_model)
        self.device.setCurrentText(s.device if s.device in DEVICES else "auto")
        for widget in (self.checkpoint, self.text_model, self.device):
            widget.blockSignals(False)

    def _show_engine(self, e: _engine.EngineSettings) -> None:
        for widget in (self.engine, self.url):
            widget.blockSignals(True)
        self.engine.setCurrentIndex(max(0, self.engine.findData(e.kind)))
        if self.url.text().strip() != e.url:
            self.url.setText(e.url)
        for widget in (self.engine, self.url):
            widget.blockSignals(False)
        server = e.kind == "server"
        for row in self._server_rows:
            self._row_visible(row, server)
        for row in self._local_rows:
            self._row_visible(row, not server)
        if server:  # the keyring is asked only when a server is chosen (it may be slow, or absent)
            saved = bool(e.url) and bool(_engine.load_token(e.url))
            self.token.setPlaceholderText(TOKEN_SAVED if saved else TOKEN_NONE)
        self.setTitle("Model (server)" if server else "Model")

    def _row_visible(self, field: QWidget, visible: bool) -> None:
        label = self.form.labelForField(field)
        for widget in (label, field):
            if widget is not None:
                widget.setVisible(visible)
        field.setEnabled(visible)

    # --- saving ----------------------------------------------------------------------------------
    def _save(self, *_args) -> None:
        SETTINGS.update(checkpoint=self.checkpoint.text().strip(), text_model=self.text_model.text().strip(),
                        device=self.device.currentText())

    def _save_engine(self, *_args) -> None:
        ENGINE.update(kind=self.engine.currentData() or "local", url=self.url.text().strip())

    def _save_token(self) -> None:
        """Keep the typed token in the OS keyring for the URL shown (never in a settings file)."""
        token = self.token.text().strip()
        self._save_engine()
        url = self.url.text().strip()
        if not token or (url, token) == self._saved_token:
            return
        if not url:
            self.server_status.setText("Enter the server's address first, then its token.")
            return
        kept = _engine.save_token(url, token)
        self._saved_token = (url, token)
        self.server_status.setText("Token saved in the OS keyring." if kept else
                                   "No OS keyring here: the token is kept only until napari closes.")
        ENGINE.notify()

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model checkpoint", self.checkpoint.text(),
                                              "Checkpoints (*.safetensors *.pt *.pth *.bin);;All files (*)")
        if path:
            self.checkpoint.setText(path)
            self._save()

    def _browse_text(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Text model folder (tokenizer + weights)")
        if path:
            self.text_model.setText(path)
            self._save()

    # --- what the jobs use -------------------------------------------------------------------------
    def settings(self) -> ModelSettings:
        """The settings as shown (saved first, so a job always uses what the user sees)."""
        self._save()
        return SETTINGS.settings

    def engine_settings(self) -> _engine.EngineSettings:
        """The engine choice as shown (saved first; a token typed but not yet confirmed is saved too)."""
        if self.engine.currentData() == "server":
            self._save_token()  # saves the URL too
        else:
            self._save_engine()
        return ENGINE.settings

    def is_server(self) -> bool:
        return self.engine.currentData() == "server"

    def test(self):
        """Ask the chosen engine which model (and index) answers; the status line says it, or why not."""
        self.server_status.setText("Asking …")
        return self.info_job.start(info_job, self.settings(), self.engine_settings(), steps=1, progress=False,
                                   on_done=lambda r: self.server_status.setText(describe_info(*r)),
                                   on_error=lambda e: self.server_status.setText(
                                       f"Not answering: {getattr(e, 'reason', e)}"))
