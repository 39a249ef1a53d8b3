"""Open napari with HLIP Explorer's widgets docked, a study, an index and a model preset.

Headless (``screenshot=path``) it waits for the study to be shown, saves a screenshot of the whole
window and closes: the project's main command and its CI use that to prove the GUI works.
"""
from __future__ import annotations

from pathlib import Path

PLUGIN = "hlip-napari"
WIDGETS = ("Study browser", "Search studies", "Zero-shot prompts", "Relevance map", "PACS")
OPTIONAL_WIDGETS = ("3-up hanging", "Worklist")  # on demand: the 3-up (two more canvases), the triage worklist


def dock_widgets(viewer, names=WIDGETS) -> dict:
    """Dock the plugin's widgets through npe2 (as the Plugins menu does); returns name -> widget."""
    out, docks = {}, []
    for name in names:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
        out[name] = widget
        docks.append(dock)
    if docks:  # tabbed together: the study browser in front (once Qt has laid the tabs out)
        from qtpy.QtCore import QTimer
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()
        docks[0].raise_()
        QTimer.singleShot(0, docks[0].raise_)
    return out


def launch(study=None, index=None, model=None, screenshot=None, *, text_model=None, device=None,
           show=None, viewer=None, size=(1600, 1000)):
    """Open a viewer with the widgets docked; returns the viewer (after closing it when headless).

    study : a study path (folder, DICOMDIR, NIfTI) to open, or a loaded ``Study``.
    index : a study index folder for the search widget.
    model : a checkpoint for the model widgets (with ``text_model``/``device``); remembered like the
        widgets' own model settings.
    screenshot : save a PNG of the whole window there, then close the viewer.
    """
    import napari

    from ._session import SETTINGS

    if model is not None or text_model is not None or device is not None:
        values = {"checkpoint": str(model)} if model is not None else {}
        if text_model is not None:
            values["text_model"] = str(text_model)
        if device is not None:
            values["device"] = str(device)
        SETTINGS.update(**values)
    if index is not None:
        SETTINGS.update(index=str(index))

    if viewer is None:
        viewer = napari.Viewer(title="HLIP Explorer", show=show if show is not None else True)
    viewer.window.resize(*size)
    widgets = dock_widgets(viewer)
    browser = widgets["Study browser"]
    if study is not None:
        from hlip_engine.study import Study

        if isinstance(study, Study):
            browser.add_studies([study])
        elif screenshot is not None:  # headless: load in this thread, the screenshot needs the layers
            from ._reader import load_studies

            browser.add_studies(load_studies(str(study)))
        else:
            browser.open_path(str(study))
    if index is not None:
        widgets["Search studies"].set_index(str(index))
    if screenshot is not None:
        save_screenshot(viewer, screenshot)
        viewer.close()
    return viewer


def save_screenshot(viewer, path) -> Path:
    """Let Qt paint, then save the whole window (docks included)."""
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(path), canvas_only=False)
    return path
