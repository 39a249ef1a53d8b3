"""Zero-shot prompts: how likely each finding is in the open study, from a paper prompt set or free text.

The prompts and templates shown in the editors are exactly what runs (a prompt set only fills them in):
the chosen engine (:func:`hlip_napari._engine.current_engine`: this computer, or ``hlip serve``) turns them
into class vectors with ``hlip_engine.zeroshot.build_classifier`` and answers the ``hlip zeroshot --json``
document; on this computer the study embedding is computed once per study and model.
"""
from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from hlip_engine.zeroshot import default_prompt_set, prompt_set_names, resolve_prompt_set

from .. import _engine
from .._layers import study_label
from .._on_screen import on_screen
from .._view import open_study_or_warn, unwrap
from .jobs import Job, follow
from .model_panel import ModelBox
from .plot import BarChart, render_bars
from .save_to_pacs import SaveToPacs

FREE = "Free prompts"
MODEL_DEFAULT = "Model's default"
MODES = {"softmax": "One of these (softmax over classes)", "binary": "Each finding yes/no (negative | positive)"}
FREE_EXAMPLE = "Normal: No significant abnormalities\nStroke: Acute stroke\nGlioma\nMeningioma\nMetastasis"
FREE_TEMPLATES = "This MRI study shows: {}."


def set_to_text(name: str | dict) -> tuple[str, str, str]:
    """A prompt set (a paper set's name, or a spec such as a model's own) as editor text:
    (mode, prompt lines, template lines)."""
    spec = resolve_prompt_set(name) if isinstance(name, str) else dict(name)
    templates = spec.get("templates") or []
    if isinstance(templates, dict):  # CT-RATE: per-organ templates; the editor shows the whole-volume ones
        templates = templates.get("volume") or next(iter(templates.values()))
    if "classes" in spec:
        lines = [f"{c}: {' | '.join(p)}" if list(p) != [c] else c for c, p in spec["classes"].items()]
        return "softmax", "\n".join(lines), "\n".join(templates)
    lines = [f"{c}: {neg} | {pos}" for c, (neg, pos) in spec["binary_prompts"].items()]
    return "binary", "\n".join(lines), "\n".join(templates)


def parse_prompts(text: str, mode: str) -> dict:
    """Editor lines -> {class: [phrasings]} (softmax) or {class: (negative, positive)} (binary).

    ``Class: phrasing 1 | phrasing 2`` or just ``phrasing``; binary lines are ``Class: negative | positive``.
    """
    out: dict = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":") if ":" in line else (line, "", line)
        name = name.strip()
        parts = [p.strip() for p in rest.split("|") if p.strip()]
        if mode == "binary":
            if len(parts) != 2:
                raise ValueError(f"prompt line {n} ({line!r}): binary mode needs 'Finding: negative | positive'")
            out[name] = (parts[0], parts[1])
        else:
            if not parts:
                raise ValueError(f"prompt line {n} ({line!r}) has no prompt after ':'")
            out[name] = parts
    if not out:
        raise ValueError("no prompts: write one finding per line")
    if mode == "softmax" and len(out) < 2:
        raise ValueError("softmax needs two or more prompts (or switch to yes/no mode)")
    return out


def parse_templates(text: str) -> list[str]:
    templates = [t.strip() for t in text.splitlines() if t.strip()]
    bad = [t for t in templates if "{}" not in t and "{c}" not in t]
    if bad:
        raise ValueError(f"template {bad[0]!r} has no {{}} where the prompt goes")
    return templates


def zeroshot_job(settings, study, prompts: dict | None, templates: list[str], mode: str, chart_width: int = 420,
                 engine_settings=None):
    """Worker: probabilities {class: p} for the study (the chosen engine's ``probabilities``), their bar chart
    (rendered here, off the Qt thread), and what ran: {name, why, mode, prompts, templates} (editor text)
    when ``prompts`` is None (the model's default set for this study), else None."""
    engine = _engine.current_engine(settings, engine_settings)
    yield from engine.warm_up()
    used = None
    if prompts is None:
        name, spec, why = default_prompt_set(engine.model_config(), study)
        mode, prompt_text, template_text = set_to_text(spec)
        prompts, templates = parse_prompts(prompt_text, mode), parse_templates(template_text)
        used = {"name": name, "why": why, "mode": mode, "prompts": prompt_text, "templates": template_text}
    yield "classifying the study"
    probs = {str(c): float(p) for c, p in engine.zeroshot(study, prompts=prompts, templates=templates,
                                                           mode=mode)["probabilities"].items()}
    yield "drawing"
    names = list(probs)
    best = max(probs, key=probs.get) if probs else None
    bars = render_bars(names, list(probs.values()), width_px=chart_width,
                       highlight=names.index(best) if best is not None else None,
                       title="P(finding present)" if mode == "binary" else "Probability (sums to 100 %)")
    return probs, bars, used


class ZeroShotWidget(QWidget):
    """Docked zero-shot classifier. ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self.screen = on_screen(self.viewer)
        self.results: dict[str, float] = {}
        self.job = Job("Zero-shot")
        self.model_box = ModelBox()

        self.prompt_set = QComboBox()
        self.prompt_set.addItem(MODEL_DEFAULT)
        self.prompt_set.addItem(FREE)
        self.prompt_set.addItems(prompt_set_names())
        self.prompt_set.setToolTip("Model's default: the set the model's config names (the demo model: its own "
                                   "five findings), else one that fits the study (CT or MR).\n"
                                   "Prompt sets of the HLIP paper fill the editors below; edit them freely")
        self.prompt_set.currentTextChanged.connect(self.use_prompt_set)
        self.mode = QComboBox()
        for key, label in MODES.items():
            self.mode.addItem(label, key)
        self.prompts = QPlainTextEdit(FREE_EXAMPLE)
        self.prompts.setToolTip("One finding per line: 'Name: phrasing | other phrasing', or just the phrasing.\n"
                                "Yes/no mode: 'Name: negative prompt | positive prompt'.")
        self.templates = QPlainTextEdit(FREE_TEMPLATES)
        self.templates.setToolTip("One template per line; {} is replaced by each prompt, results averaged")
        self.templates.setMaximumHeight(48)
        self.prompts.setMaximumHeight(120)
        form = QFormLayout()
        form.addRow("Prompt set", self.prompt_set)
        form.addRow("Mode", self.mode)
        form.addRow("Prompts", self.prompts)
        form.addRow("Templates", self.templates)

        self.run_button = QPushButton("Classify the open study")
        self.run_button.clicked.connect(self.run)
        buttons, self.cancel_button = self.job.buttons(self.run_button)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.job.on_cancel(lambda: self.status.setText("Cancelled."))
        self.for_study = QLabel("")
        self.for_study.setWordWrap(True)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(("Finding", "Probability"))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.chart = BarChart(self)

        self.setMinimumWidth(340)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_box)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.for_study)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.chart, 1)
        self.save_to_pacs = SaveToPacs(self.screen, self.model_box, self.report_request, self)
        layout.addWidget(self.save_to_pacs)
        self.use_prompt_set(MODEL_DEFAULT)
        follow(self, self.screen.study_changed, self.study_changed)
        self.study_changed(self.screen.study)

    def study_changed(self, study) -> None:
        """Another study on screen: the results shown were for the one before, so they go (a job running
        for it is stopped; its result would be dropped anyway)."""
        self.job.stop()
        if hasattr(self, "save_to_pacs"):
            self.save_to_pacs.clear()
        self.results, self._study = {}, None
        self.table.setRowCount(0)
        self.chart.clear_bars()
        self.for_study.setText("")
        self.status.setText(f"Open study: {study_label(study)} · {study.description or study.uid}. "
                            "Press Classify." if study is not None else "No study open.")

    def use_prompt_set(self, name: str) -> None:
        if name == FREE:
            return
        if name == MODEL_DEFAULT:
            self.prompts.setPlaceholderText("filled in from the model's default prompt set when you classify")
            self.prompts.setPlainText("")
            self.templates.setPlainText("")
            return
        mode, prompts, templates = set_to_text(name)
        self.mode.setCurrentIndex(self.mode.findData(mode))
        self.prompts.setPlainText(prompts)
        self.templates.setPlainText(templates)

    def run(self):
        """Classify the open study with the prompts as edited."""
        from napari.utils.notifications import show_warning

        study = open_study_or_warn(self.viewer)
        if study is None:
            return None
        mode = self.mode.currentData()
        prompts, templates = None, []
        if self.prompt_set.currentText() != MODEL_DEFAULT:
            try:
                prompts = parse_prompts(self.prompts.toPlainText(), mode)
                templates = parse_templates(self.templates.toPlainText())
            except ValueError as e:
                show_warning(f"{e}")
                return None
        self.status.setText(f"Classifying {study_label(study)} “{study.description or study.uid}” …")
        self._mode, self._study = mode, study
        self.for_study.setText("")
        return self.job.start(zeroshot_job, self.model_box.settings(), study, prompts, templates, mode,
                              self.chart.render_width(), self.model_box.engine_settings(), steps=3,
                              screen=self.screen, on_done=lambda r: self.show_results(*r),
                              on_error=lambda _e: self.status.setText("Zero-shot failed (see the notification)."))

    def report_request(self):
        """(study, report options) for Save to PACS: the prompts as edited, or the model's default set."""
        from napari.utils.notifications import show_warning

        study = open_study_or_warn(self.viewer)
        if study is None:
            return None
        mode = self.mode.currentData()
        try:
            if self.prompts.toPlainText().strip():
                return study, {"prompts": parse_prompts(self.prompts.toPlainText(), mode),
                               "templates": parse_templates(self.templates.toPlainText()) or None, "mode": mode}
        except ValueError as e:
            show_warning(f"{e}")
            return None
        name = self.prompt_set.currentText()
        if name in (MODEL_DEFAULT, FREE):
            name = None
        return study, {"prompt_set": name}  # None: the model's default set, chosen where the model is

    def show_results(self, probs: dict[str, float], bars, used: dict | None = None) -> None:
        self.results = dict(probs)
        self.used = used
        if used is not None:  # the model's default set: show exactly what ran, ready to edit
            self._mode = used["mode"]
            self.mode.setCurrentIndex(self.mode.findData(used["mode"]))
            self.prompts.setPlainText(used["prompts"])
            self.templates.setPlainText(used["templates"])
        study = getattr(self, "_study", None)
        if study is not None:
            which = f" · prompt set {used['name']} ({used['why']})" if used else ""
            self.for_study.setText(f"<b>Results for {study_label(study)} · {study.description or study.uid}</b>"
                                   f"{which}")
        self.table.setRowCount(len(probs))
        best = max(probs, key=probs.get) if probs else None
        for r, (name, p) in enumerate(probs.items()):
            name_item = QTableWidgetItem(name)
            p_item = QTableWidgetItem(f"{p:.1%}")
            p_item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if name == best:
                font = name_item.font()
                font.setBold(True)
                name_item.setFont(font)
                p_item.setFont(font)
            self.table.setItem(r, 0, name_item)
            self.table.setItem(r, 1, p_item)
        binary = getattr(self, "_mode", "softmax") == "binary"
        self.chart.show_bars(bars)
        self.status.setText("Not for diagnosis: model probabilities for research use."
                            if not binary else "Yes/no probability per finding. Not for diagnosis.")
