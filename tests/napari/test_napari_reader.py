"""The reader: cheap claims, real DICOM read back, scans placed in patient space, CT/MR contrast."""
from __future__ import annotations

import numpy as np
from napari_helpers import write_two_plane_study

from hlip_napari._layers import layer_view, window_limits
from hlip_napari._reader import get_reader


def test_get_reader_claims_studies_and_declines_the_rest(tmp_path):
    folder, _marker, _ax = write_two_plane_study(tmp_path / "study")
    assert get_reader(str(folder)) is not None  # nested series folders, files named *.dcm
    one = next((folder / "ax").iterdir())
    extensionless = folder / "ax" / "IM0001"  # PACS exports often have no extension
    one.rename(extensionless)
    assert get_reader(str(extensionless)) is not None
    assert get_reader([str(folder)]) is not None

    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.bin").write_bytes(b"\0" * 300)
    for path in (tmp_path / "notes.txt", tmp_path / "missing", [str(tmp_path / "junk"), str(folder)]):
        assert get_reader(str(path) if not isinstance(path, list) else path) is None
    # a folder is claimed whole (napari's reader chooser never shows for a folder): one without a study
    # gets the plugin's plain message and napari's "handled, no layers"
    for path in (tmp_path / "empty", tmp_path / "junk"):
        assert get_reader(str(path))(str(path)) == [(None,)]
    (tmp_path / "store.zarr").mkdir()
    assert get_reader(str(tmp_path / "store.zarr")) is None  # another reader's folder
    assert get_reader(12345) is None  # never raises, whatever napari passes


def test_two_orientation_study_lands_in_the_same_place(tmp_path, make_napari_viewer):
    """Axial + sagittal reformat of one volume: a marked voxel has one world position in both layers."""
    folder, marker, axial = write_two_plane_study(tmp_path / "study")
    layer_data = get_reader(str(folder))(str(folder))
    assert len(layer_data) == 2
    viewer = make_napari_viewer()
    layers = [viewer.add_image(data, **kwargs) for data, kwargs, kind in layer_data if kind == "image"]
    by_plane = {layer.metadata["orientation"]: layer for layer in layers}
    assert set(by_plane) == {"axial", "sagittal"}
    expected = axial.world(marker)[::-1]  # LPS -> napari world (S, P, L)
    for plane, layer in by_plane.items():
        found = np.unravel_index(int(np.argmax(layer.data)), layer.data.shape)  # the marker's voxel
        world = np.asarray(layer.data_to_world(found), dtype=float)
        np.testing.assert_allclose(world, expected, atol=1e-3, err_msg=f"{plane} layer misplaces the marker")
        # world-aligned axes: napari slices them without "non-orthogonal" approximation
        lin = np.asarray(layer.affine.linear_matrix)
        assert np.allclose(lin, np.diag(np.diag(lin)), atol=1e-6) and (np.diag(lin) > 0).all()
    # the sagittal series is stored (x, -z, y): its layer is a view of the same voxels, reordered
    sag = by_plane["sagittal"]
    np.testing.assert_array_equal(np.asarray(sag.data), np.asarray(by_plane["axial"].data))
    # a head CT opens in the brain window (W80/L40), with HU metadata attached
    assert tuple(sag.contrast_limits) == window_limits("Brain") == (0.0, 80.0)
    assert sag.metadata["modality"] == "CT" and sag.metadata["series_number"] == 3
    assert sag.metadata["series_description"] == "HEAD SAG" and sag.name == "2024-01-02 CT · 3 HEAD SAG"
    assert all(layer.metadata["study_uid"] and layer.metadata["series_uid"] for layer in layers)
    # one scan at a time (they overlap); last scan first, so napari's layer list (last added on top) reads in
    # series order and the shown first scan, added last, is napari's active layer
    assert [(layer.metadata["hlip_scan"], layer.visible) for layer in layers] == [(1, False), (0, True)]


def test_layer_view_of_oblique_scan_keeps_exact_world_positions():
    """A 20-degree oblique scan: the reoriented layer maps every voxel where the scan's affine does."""
    from hlip_engine.study import Scan

    t = np.deg2rad(20)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.1, 4.0])
    affine[:3, 3] = (5, -7, 30)
    scan = Scan(voxels=np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7), affine=affine)
    view, affine = layer_view(scan)  # the engine's reorient_view + the affine that goes with it
    data = view.apply(scan.voxels)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = tuple(int(rng.integers(0, n)) for n in data.shape)
        src = np.argwhere(scan.voxels == data[idx])[0]
        np.testing.assert_allclose((affine @ np.array([*idx, 1.0]))[:3], scan.world(src)[::-1], atol=1e-9)


def test_nifti_file_opens_as_one_scan(tmp_path):
    import nibabel as nib

    vol = np.zeros((20, 22, 18), dtype=np.float32)  # RAS (x, y, z)
    vol[4, 5, 6] = 100.0
    aff = np.diag([1.5, 1.5, 3.0, 1.0])
    aff[:3, 3] = (-10, -12, -20)
    path = tmp_path / "t2.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), path)
    reader = get_reader(str(path))
    assert reader is not None
    (data, kwargs, kind), = reader(str(path))
    idx = np.unravel_index(int(np.argmax(data)), data.shape)
    world = (kwargs["affine"] @ np.array([*idx, 1.0]))[:3]
    ras = aff @ np.array([4, 5, 6, 1.0])
    np.testing.assert_allclose(world, [ras[2], -ras[1], -ras[0]], atol=1e-4)  # (S, P, L) = (z, -y, -x)
    assert kind == "image" and kwargs["metadata"]["contrast"].startswith("auto")


def test_hlip_tensor_folder_opens_one_layer_per_scan(tmp_path):
    """The official processed layout: <study>/<scan>.pt, float [D, H, W] in [0, 1]."""
    import torch

    study = tmp_path / "BraTS-case"
    study.mkdir()
    rng = np.random.default_rng(0)
    for name in ("t1", "flair"):
        torch.save(torch.from_numpy(rng.random((12, 20, 16), dtype=np.float32)), study / f"{name}.pt")
    for path in (study, study / "t1.pt"):
        reader = get_reader(str(path))
        assert reader is not None
        layers = reader(str(path))
        assert len(layers) == 2
        assert {tuple(d.shape) for d, _k, _t in layers} == {(12, 20, 16)}
        assert all(k["metadata"]["contrast"].startswith("auto") for _d, k, _t in layers)


def test_layer_view_aligns_every_orthogonal_orientation_with_the_world_axes():
    """All 48 axis permutations x flips: the layer's voxels run along (S, P, L), each voxel where it was."""
    import itertools

    from hlip_engine.study import Scan

    vox = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            affine = np.eye(4)
            affine[:3, :3] = np.eye(3)[:, perm] * np.array(signs) * np.array([0.5, 0.7, 2.0])
            affine[:3, 3] = (1.0, -2.0, 3.0)
            scan = Scan(voxels=vox, affine=affine)
            view, layer_affine = layer_view(scan)
            lin = layer_affine[:3, :3]
            assert np.allclose(lin, np.diag(np.diag(lin))) and (np.diag(lin) > 0).all(), (perm, signs)
            data = view.apply(vox)
            for idx in [(0, 0, 0), tuple(n - 1 for n in data.shape), (1, 2, 0)]:
                src = np.argwhere(vox == data[idx])[0]
                np.testing.assert_allclose((layer_affine @ np.array([*idx, 1.0]))[:3], scan.world(src)[::-1])


def test_file_open_prefers_this_reader_and_a_bad_folder_changes_nothing(tmp_path, make_napari_viewer, qtbot):
    """File > Open / drag and drop open with napari's preferred reader: no reader dialog for a DICOM folder
    (this plugin is preferred for folders), a user's own choice is kept; a folder that cannot be read says
    so and leaves the study on screen."""
    from napari.plugins.utils import get_preferred_reader
    from napari.settings import get_settings
    from napari.utils.notifications import notification_manager

    from hlip_napari._on_screen import on_screen
    from hlip_napari._reader import READER_PATTERNS, prefer_for_studies

    viewer = make_napari_viewer()
    folder, _marker, _ax = write_two_plane_study(tmp_path / "study")
    settings = get_settings().plugins
    settings.extension2reader = {"*.dcm": "napari"}  # this user opens single .dcm files with napari's reader
    added = prefer_for_studies()
    assert "*.dcm" not in added and set(added) == set(READER_PATTERNS) - {"*.dcm"}
    assert settings.extension2reader["*.dcm"] == "napari"
    assert get_preferred_reader(str(folder)) == "hlip-napari"
    assert get_preferred_reader(str(tmp_path / "scan.nii.gz")) == "hlip-napari"
    assert prefer_for_studies() == []  # idempotent

    viewer.open(str(folder), plugin=get_preferred_reader(str(folder)))  # as File > Open picks the reader
    assert len(viewer.layers) == 2
    assert {layer.metadata["orientation"] for layer in viewer.layers} == {"axial", "sagittal"}
    study = on_screen(viewer).study
    assert study is not None and study.uid == viewer.layers[0].metadata["study_uid"]

    # a folder this reader claims but cannot load: a notification naming it, no layers, no dialog
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 40)
    messages = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    viewer.open(str(bad), plugin=get_preferred_reader(str(bad)))
    qtbot.waitUntil(lambda: any(str(bad) in m for m in messages), timeout=30000)
    assert len(viewer.layers) == 2 and on_screen(viewer).study is study  # the study on screen stays
    assert str(bad) in on_screen(viewer).last_failure

    # a script's viewer.open still returns the layers at once
    viewer.layers.clear()
    layers = viewer.open(str(folder), plugin="hlip-napari")
    assert len(layers) == 2
