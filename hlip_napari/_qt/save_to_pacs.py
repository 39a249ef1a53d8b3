""""Save to PACS": the study's results as DICOM (an SR with the findings, relevance maps as Parametric Maps),
written by the engine's :func:`hlip_engine.report.make_report` and stored on a PACS node, from the Zero-shot
and Relevance widgets. One row: the node, the button, Cancel, and a line saying what was stored.

The work runs on this computer (the model in the Model box); a study that leaves the screen while it runs
drops its result. Research results, UNVERIFIED in the SR: never a diagnosis.
"""
from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QComboBox, QLabel, QPushButton, QVBoxLayout, QWidget

from .. import _engine
from .._layers import study_label
from .jobs import Job


def known_nodes() -> list[str]:
    """The PACS nodes the engine's client knows (its nodes file); none when it has no file."""
    try:
        from hlip_engine.pacs import load_nodes

        return sorted(load_nodes())
    except Exception:  # noqa: BLE001 - a broken nodes file says so when used
        return []


def report_job(settings, engine_settings, study, request: dict, node: str):
    """Worker: the study's report written into the plugin's cache and stored on ``node``."""
    from hlip_engine.remote import EngineError
    from hlip_engine.report import make_report

    engine = _engine.current_engine(settings, engine_settings)
    if getattr(engine, "kind", "local") != "local":
        raise EngineError("Save to PACS runs the model on this computer: choose 'this computer' in the Model "
                          "box", kind="bad_request")
    yield from engine.warm_up()
    if "prompt_set" in request and not request["prompt_set"]:  # the model's default prompt set for this study
        from hlip_engine.zeroshot import default_prompt_set

        name, spec, _why = default_prompt_set(engine.model_config(), study)
        request = {**request, "prompt_set": {**spec, "name": name}}
    yield "computing the findings"
    out = _engine.cache_dir() / "reports" / (study.uid or Path(str(study.source)).name or "study")
    result = make_report(study, engine.model, out, send=node or None, **request)
    yield "stored"
    return result


class SaveToPacs(QWidget):
    """The row. ``request()`` returns ``(study, report options)`` for the study on screen, or None."""

    def __init__(self, screen, model_box, request, parent=None):
        super().__init__(parent)
        self.screen, self.model_box, self.request = screen, model_box, request
        self.job = Job("Save to PACS")
        self.node = QComboBox()
        self.node.setEditable(True)
        self.node.addItems(known_nodes())
        self.node.setToolTip("A PACS node of the nodes file (hlip pacs), or a DICOMweb URL")
        self.button = QPushButton("Save to PACS")
        self.button.setToolTip("File the findings (DICOM SR) and relevance maps (Parametric Maps) with the study "
                               "on the chosen node. Research results, marked UNVERIFIED")
        self.button.clicked.connect(self.save)
        row, _cancel = self.job.buttons(self.button, self.node)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.job.on_cancel(lambda: self.status.setText("Saving cancelled; nothing recorded as sent."))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)

    def clear(self) -> None:
        self.job.stop()
        self.status.setText("")

    def save(self):
        asked = self.request()
        if asked is None:
            return None
        study, request = asked
        node = self.node.currentText().strip()
        if not node:
            self.status.setText("Choose a PACS node first (the nodes file of `hlip pacs`, or a DICOMweb URL).")
            return None
        self.status.setText(f"Saving {study_label(study)} results to {node} …")
        return self.job.start(report_job, self.model_box.settings(), self.model_box.engine_settings(), study,
                              request, node, steps=4, screen=self.screen,
                              on_done=lambda result: self._saved(study, node, result),
                              on_error=lambda _e: self.status.setText(
                                  f"Not stored on {node} (see the notification); nothing recorded as sent."))

    def _saved(self, study, node: str, result) -> None:
        maps = len(result.maps)
        notes = f" Not written: {'; '.join(result.notes)}" if result.notes else ""
        self.status.setText(f"Stored on {node} with {study_label(study)}: the findings (SR) and {maps} relevance "
                            f"map(s). Research results, UNVERIFIED.{notes}")

