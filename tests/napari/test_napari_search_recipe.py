"""The GUI's "more like this" and `hlip search --like` answer through one engine function, so they agree on
an index built with another recipe than the model's (`hlip index build --recipe head-ct`), and the GUI
refuses an index built by another model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from napari_helpers import use_model, write_two_plane_study

from hlip_engine.cli import main as hlip
from hlip_engine.index import IndexBuild, IndexFormatError
from hlip_engine.model.checkpoint import model_fingerprint


def _head_ct_index(root, model, checkpoint, study_folder):
    """What `hlip index build --recipe head-ct` records: the recipe + grid, the model's sha256, the vectors.

    Row 0 is the CT study's head-CT vector under another StudyInstanceUID (a twin, so "more like this"
    may return it); the other rows are random."""
    from hlip_engine.io import load_study
    from hlip_engine.preprocessing import model_recipe, preprocess

    recipe, options = model_recipe(model.config["preprocess"], "head-ct")
    assert recipe != model.config["preprocess"]["recipe"]  # the index's recipe is not the model's
    prepared = preprocess(load_study(study_folder), recipe, **options)
    import torch

    with torch.inference_mode():
        twin = model.encode_image(torch.as_tensor(prepared.tensor)[None]).numpy()
    rng = np.random.default_rng(0)
    vectors = np.concatenate([twin, rng.normal(size=(11, model.embed_dim))]).astype(np.float32)
    meta = [dict(key="twin", path="/archive/twin", study_uid="7.7.7", date="20240102", modality="CT",
                 description="twin of the open study", n_scans=2)]
    meta += [dict(key=f"r{i}", path=f"/nowhere/{i}", study_uid=f"8.{i}", date="20200101", modality="CT",
                  description=f"random {i}", n_scans=1) for i in range(11)]
    index = IndexBuild.create(root, model.embed_dim, checkpoint.name, model_hash=model_fingerprint(checkpoint),
                              recipe=recipe)
    index.add(vectors, meta)
    index.commit(extra_info={"checkpoint": str(checkpoint), "preprocess": {"recipe": recipe, **options}})
    return root


def test_more_like_this_uses_the_index_recipe_as_the_cli_does(tmp_path, tiny_checkpoint, tiny_model,
                                                             make_napari_viewer, qtbot, capsys):
    from hlip_napari._launch import dock_widgets
    from hlip_napari._reader import load_studies
    from hlip_napari._show import show_study as add_studies

    folder, _marker, _ax = write_two_plane_study(tmp_path / "ct_head")
    index_dir = _head_ct_index(tmp_path / "index", tiny_model, tiny_checkpoint, folder)
    use_model(tiny_checkpoint)
    viewer = make_napari_viewer()
    sw = dock_widgets(viewer, ("Search studies",))["Search studies"]
    sw.set_index(str(index_dir))
    add_studies(viewer, load_studies(str(folder)))
    sw.more_like_this()
    qtbot.waitUntil(lambda: len(sw.rows) > 0 or "failed" in sw.status.text(), timeout=60_000)
    assert sw.rows, sw.status.text()
    assert sw.rows[0]["key"] == "twin" and sw.scores[0] == pytest.approx(1.0, abs=2e-3)
    qtbot.waitUntil(lambda: not sw.job.running, timeout=10_000)  # its buttons reset before the viewer closes

    assert hlip(["search", str(index_dir), "--like", str(folder), "--json", "-k", "3"]) == 0
    cli = json.loads(capsys.readouterr().out)["hits"]
    assert [h["key"] for h in cli] == [r["key"] for r in sw.rows[:3]]
    assert [h["score"] for h in cli] == pytest.approx(sw.scores[:3], abs=1e-4)


def test_the_gui_refuses_an_index_of_another_model(tmp_path, tiny_checkpoint, tiny_model, make_napari_viewer,
                                                   qtbot):
    from hlip_napari._qt.search import search_job
    from hlip_napari._session import SETTINGS

    folder, _marker, _ax = write_two_plane_study(tmp_path / "ct_head")
    index_dir = _head_ct_index(tmp_path / "index", tiny_model, tiny_checkpoint, folder)
    other = tmp_path / "copy" / tiny_checkpoint.name
    other.parent.mkdir()
    other.write_bytes(tiny_checkpoint.read_bytes())  # the same weights elsewhere: accepted
    use_model(other)
    job = search_job(SETTINGS.settings, str(index_dir), "a query", 3)
    with pytest.raises(StopIteration) as done:
        while True:
            next(job)
    assert done.value.value["rows"]

    import torch

    from hlip_engine import create_model

    torch.manual_seed(1)
    create_model("hlip_tiny", embed_dim=512).save(other)  # other weights under the same file name
    from hlip_napari._session import INDEXES, MODELS

    MODELS.clear()
    INDEXES.clear()
    job = search_job(SETTINGS.settings, str(index_dir), "a query", 3)
    with pytest.raises(IndexFormatError, match="model weights differ"):
        while True:
            next(job)
