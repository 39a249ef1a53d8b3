"""The "Model" box every model widget shows: checkpoint, text model folder, device; remembered.

All boxes edit the same :data:`hlip_napari._session.SETTINGS`, so changing the checkpoint in one widget
changes it in the others, and the choice survives a napari restart.
"""
from __future__ import annotations

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QToolButton,
    QWidget,
)

from .._session import SETTINGS
from ..settings import DEVICES, ModelSettings
from .jobs import follow


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


class ModelBox(QGroupBox):
    """Checkpoint / text model / device, saved on every edit."""

    def __init__(self, parent=None):
        super().__init__("Model", parent)
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("HLIP checkpoint (.safetensors, official .pt, or model folder)")
        self.text_model = QLineEdit()
        self.text_model.setPlaceholderText("default: the text model the checkpoint names")
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.device.setToolTip("auto = CUDA when available (bf16), else CPU (fp32)")
        form = QFormLayout(self)
        form.addRow("Checkpoint", _path_row(self.checkpoint, self._browse_checkpoint))
        form.addRow("Text model", _path_row(self.text_model, self._browse_text))
        form.addRow("Device", self.device)
        self._show(SETTINGS.settings)
        self.checkpoint.editingFinished.connect(self._save)
        self.text_model.editingFinished.connect(self._save)
        self.device.currentTextChanged.connect(self._save)
        follow(self, SETTINGS.changed, self._show)

    def _show(self, s: ModelSettings) -> None:
        for widget in (self.checkpoint, self.text_model, self.device):
            widget.blockSignals(True)
        self.checkpoint.setText(s.checkpoint)
        self.text_model.setText(s.text_model)
        self.device.setCurrentText(s.device if s.device in DEVICES else "auto")
        for widget in (self.checkpoint, self.text_model, self.device):
            widget.blockSignals(False)

    def _save(self, *_args) -> None:
        SETTINGS.update(checkpoint=self.checkpoint.text().strip(), text_model=self.text_model.text().strip(),
                        device=self.device.currentText())

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

    def settings(self) -> ModelSettings:
        """The settings as shown (saved first, so a job always uses what the user sees)."""
        self._save()
        return SETTINGS.settings
