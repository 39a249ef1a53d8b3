"""HLIP Explorer's napari plugin: a thin GUI over :mod:`hlip_engine` (reader, widgets, sample data).

``launch()`` opens a viewer with the plugin's widgets docked (the project's main command uses it).
Importing this package stays cheap: napari, Qt and torch load only when a widget or reader needs them.
"""

__version__ = "0.1.0"

__all__ = ["launch"]


def launch(study=None, index=None, model=None, screenshot=None, **kwargs):
    """Open napari with the HLIP widgets; see :func:`hlip_napari._launch.launch`."""
    from ._launch import launch as _launch

    return _launch(study=study, index=index, model=model, screenshot=screenshot, **kwargs)
