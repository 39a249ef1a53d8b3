"""The relevance picture `hlip demo` writes (``save_peak_view``): every panel upright as a reader hangs it
(vertex up on the coronal and sagittal reformats, nose up on the axial, the patient's right on the left),
whatever order the scan's slices, rows and columns run in the patient."""
from __future__ import annotations

import numpy as np
import pytest

from hlip_engine.relevance.export import peak_panels, save_peak_view
from hlip_engine.relevance.maps import Relevance
from hlip_engine.study import Scan, Study

SHAPE = (20, 40, 36)  # slices, rows, columns


def _affine(column, row, slice_, spacing=(1.0, 1.0, 4.0)) -> np.ndarray:
    """(column, row, slice) LPS directions and mm -> a voxel-to-LPS affine centred near the origin."""
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2] = (np.asarray(v, float) * s for v, s in zip((column, row, slice_), spacing))
    a[:3, 3] = -a[:3, :3] @ (np.array(SHAPE[::-1]) / 2.0)
    return a


X, Y, Z = (1, 0, 0), (0, 1, 0), (0, 0, 1)  # +L, +P, +S in LPS
NEG = {X: (-1, 0, 0), Y: (0, -1, 0), Z: (0, 0, -1)}
ACQUISITIONS = {
    "axial, slices inferior to superior": _affine(X, Y, Z),  # the demo phantoms' order
    "axial, slices superior to inferior": _affine(X, Y, NEG[Z]),
    "axial, flipped rows and columns": _affine(NEG[X], NEG[Y], Z),
    "sagittal": _affine(Y, NEG[Z], X),
    "coronal": _affine(X, NEG[Z], Y),
}


def _world(affine: np.ndarray) -> np.ndarray:
    """LPS mm of every voxel centre, [3, slices, rows, columns]."""
    s, r, c = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return np.einsum("ij,jsrc->isrc", affine[:3, :3], np.stack([c, r, s]).astype(float)) + \
        affine[:3, 3, None, None, None]


@pytest.mark.parametrize("name", list(ACQUISITIONS))
def test_each_panel_is_upright_and_its_letters_say_so(name):
    affine = ACQUISITIONS[name]
    world = _world(affine)
    voxel = (7, 25, 11)
    planes = {}
    for axis in range(3):  # each panel drawn from the patient coordinate along one axis
        scan = Scan(world[axis].astype(np.float32), affine, modality="CT")
        for panel in peak_panels(scan, world[axis], voxel):
            planes.setdefault(panel.plane, {})[axis] = panel
    assert set(planes) == {"axial", "coronal", "sagittal"}  # the scan's own plane and two reformats
    want = {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"), "sagittal": ("S", "I", "A", "P")}
    for plane, by_axis in planes.items():
        assert all(p.letters == want[plane] for p in by_axis.values()), (plane, by_axis[0].letters)
        vertical = 2 if plane != "axial" else 1  # S/I, or A/P on an axial
        horizontal = 0 if plane != "sagittal" else 1  # L/R, or A/P on a sagittal
        v, h = by_axis[vertical].image, by_axis[horizontal].image
        if vertical == 2:
            assert v[0].mean() > v[-1].mean(), f"{name}: the {plane} panel's top row is not its superior one"
        else:
            assert v[0].mean() < v[-1].mean(), f"{name}: the axial panel's top row is not its anterior one"
        # LPS grows to the patient's left and posterior: the right (or anterior) edge is on the viewer's left
        assert h[:, 0].mean() < h[:, -1].mean(), f"{name}: the {plane} panel is mirrored left to right"
        lps = np.stack([by_axis[axis].image for axis in range(3)])  # [3, rows, columns] of the panel
        y, x = (int(round(t)) for t in by_axis[0].peak)  # the cross marks the peak voxel itself
        np.testing.assert_allclose(lps[:, y, x], world[(slice(None), *voxel)], atol=1e-3)
        down, across = np.linalg.norm(lps[:, 1, 0] - lps[:, 0, 0]), np.linalg.norm(lps[:, 0, 1] - lps[:, 0, 0])
        assert by_axis[0].aspect == pytest.approx(down / across)  # drawn in millimetres, not voxels


@pytest.mark.parametrize("name", ["axial, slices inferior to superior", "axial, slices superior to inferior"])
def test_the_drawn_reformats_have_the_vertex_at_the_top(name, tmp_path, monkeypatch):
    """A phantom whose superior half is bright: in the rendered PNG, the top of the coronal and sagittal
    panels is bright and the bottom dark (and the axial panel, a slice of one half, is even)."""
    import matplotlib.pyplot as plt

    affine = ACQUISITIONS[name]
    superior = _world(affine)[2] > 0
    voxels = np.where(superior, 60.0, 0.0).astype(np.float32)  # CT: drawn in a 0..80 window
    centre = np.array(SHAPE) // 2
    volume = np.zeros(SHAPE, np.float32)
    volume[tuple(centre)] = 1.0  # a one-voxel hot spot in the middle
    scan = Scan(voxels, affine, modality="CT", description="phantom")
    rel = Relevance(tokens=np.ones((1, 2, 2, 2), np.float32), prompt="mass", logit=1.0, patch_size=(8, 8, 8),
                    model_grid=(16, 16, 16), scan_indices=[0], volumes=[volume], volume_scans=[0])
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    png = save_peak_view(rel, Study("1.2.3", [scan]), tmp_path / "peak.png")
    assert png.is_file() and len(figures) == 1
    fig = figures[0]
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float).mean(axis=-1) / 255.0
    height = pixels.shape[0]
    for ax in fig.axes:
        box = ax.get_window_extent()  # display pixels, y up from the bottom
        top, bottom = int(height - box.y1), int(height - box.y0)
        left, right = int(box.x0), int(box.x1)
        band = max(2, (bottom - top) // 5)
        cols = slice(left + 2, left + (right - left) // 4)  # clear of the cross, the hot spot and the letters
        upper, lower = pixels[top + band // 2:top + band, cols].mean(), pixels[bottom - band:bottom - band // 2, cols].mean()
        title = ax.get_title()
        if title.startswith(("coronal", "sagittal")):
            assert upper > 0.5 > lower + 0.3, f"{name}: {title}: top {upper:.2f}, bottom {lower:.2f}"
        else:
            assert abs(upper - lower) < 0.05, f"{name}: {title}"
    assert sorted(ax.get_title().split(":")[0] for ax in fig.axes) == ["axial", "coronal", "sagittal"]
