"""Qt views of the plugin (docked widgets). Each is a thin view: it gathers inputs, runs one engine
call in a napari thread worker and shows the result; no model math lives here."""
