"""--flip-lr: a study mirrored along the patient's left-right axis has its report's sides swapped."""
import json

import numpy as np
import pytest
import torch

from hlip_engine.recipes.orientation import depth_first_order, reorient_view
from training.data import IMAGE_MEAN, IMAGE_STD, StudyDataset
from training.flip import lr_axis, lr_axis_of_view, swap_sides

SIZE = (16, 32, 32)


def test_side_words_swap_with_their_case_and_only_as_words():
    assert swap_sides("Mass in the left frontal lobe.") == "Mass in the right frontal lobe."
    assert swap_sides("Right-sided effusion; LEFT lung clear, Left > right.") == \
        "Left-sided effusion; RIGHT lung clear, Right > left."
    assert swap_sides("R MCA infarct, L PCA patent.") == "L MCA infarct, R PCA patent."
    assert swap_sides("Shift leftward.") == "Shift rightward."
    # not sides: vertebral levels, words containing the letters, rule-out, lower-case single letters
    text = "Disc bulge at L4-L5 and T12, R/O abscess, bright lesion, copyright l r."
    assert swap_sides(text) == text
    assert swap_sides(swap_sides("left and Right and L")) == "left and Right and L"


def test_lr_axis_from_the_manifest_and_from_the_engines_reorientation():
    assert lr_axis({"view": "axial"}) == 2 and lr_axis({"view": "coronal"}) == 2
    assert lr_axis({"view": "sagittal"}) == 0  # RPI + largest spacing first: slices stack left to right
    assert lr_axis({"view": "sagittal", "lr_axis": 2}) == 2  # what training.prepare recorded wins
    assert lr_axis(None, raw_hu=True) == 2  # CT-RATE: (z, y, x) of the axial NIfTI
    with pytest.raises(ValueError):
        lr_axis({"lr_axis": 3})
    # the engine's own views: a DICOM axial scan (LPS) and a 5 mm sagittal one (columns P, rows I, slices L)
    axial = np.eye(3)
    view = reorient_view(axial, "RPI").then_transpose(depth_first_order(np.array([5.0, 1.0, 1.0])))
    assert lr_axis_of_view(axial, view.axes) == 2
    sagittal = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # columns: col, row, slice axes
    view = reorient_view(sagittal, "RPI")
    spacing = np.array([5.0, 1.0, 1.0])[list(view.axes)]
    view = view.then_transpose(depth_first_order(spacing))
    assert lr_axis_of_view(sagittal, view.axes) == 0


@pytest.fixture
def blob_cache(tmp_path):
    """One axial and one sagittal scan with a bright blob on the patient's left, and a report saying so."""
    axial = torch.zeros(SIZE, dtype=torch.uint8)
    axial[:, :, :8] = 255  # left = low W columns here
    sagittal = torch.zeros(SIZE, dtype=torch.uint8)
    sagittal[:4] = 255  # left = the first slices
    for name, x in (("AX", axial), ("SAG", sagittal)):
        (tmp_path / "S1" / name).mkdir(parents=True)
        torch.save(x, tmp_path / "S1" / name / "img.pt")
    manifest = {"S1": {"series": {"AX": {"view": "axial"}, "SAG": {"view": "sagittal"}},
                       "report": ["Mass in the left frontal lobe.", "No right-sided lesion."]}}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def unit(x: torch.Tensor) -> torch.Tensor:
    return x * IMAGE_STD + IMAGE_MEAN


def test_flip_moves_the_left_blob_to_the_right_and_the_report_follows(blob_cache):
    ds = StudyDataset(blob_cache, train=True, num_scans=2, size=SIZE, flip_lr=1.0, shuffle_sentences=False)
    plain = StudyDataset(blob_cache, train=True, num_scans=2, size=SIZE, shuffle_sentences=False)
    scans, report, _ = ds[(0, 0)]
    same, original, _ = plain[(0, 0)]
    assert original == "This MRI study shows: Mass in the left frontal lobe. No right-sided lesion."
    assert report == "This MRI study shows: Mass in the right frontal lobe. No left-sided lesion."
    for x, y in zip(scans, same):
        x, y = unit(x[0]), unit(y[0])
        if y[:, :, :8].mean() > 0.9 and y[:, :, 8:].mean() < 0.1:  # the axial scan: blob now in the last columns
            assert x[:, :, -8:].mean() > 0.99 and x[:, :, :-8].max() < 0.01
        else:  # the sagittal scan: blob now in the last slices
            assert y[:4].mean() > 0.99
            assert x[-4:].mean() > 0.99 and x[:-4].max() < 0.01
        torch.testing.assert_close(x.flip(2) if y[:, :, :8].mean() > 0.9 else x.flip(0), y)


def test_flip_is_drawn_with_its_probability_and_off_changes_nothing(blob_cache):
    off = StudyDataset(blob_cache, train=True, num_scans=2, size=SIZE)
    half = StudyDataset(blob_cache, train=True, num_scans=2, size=SIZE, flip_lr=0.5)
    flipped = 0
    for epoch in range(40):
        a, ra, _ = off[(0, epoch)]
        b, rb, _ = half[(0, epoch)]
        if ra != rb:
            flipped += 1
            assert "right frontal" in rb
        else:
            torch.testing.assert_close(a, b)  # not flipped: exactly the item without the option
    assert 8 <= flipped <= 32
    evaluation = StudyDataset(blob_cache, train=False, size=SIZE, flip_lr=1.0)
    assert "left frontal" in evaluation[0][1]  # never in evaluation
    with pytest.raises(ValueError, match="flip_lr"):
        StudyDataset(blob_cache, flip_lr=1.5)


def test_flip_lr_options_are_checked():
    from training.config import parse_config

    for bad in (["--flip-lr", "1.5"], ["--flip-lr", "0.5", "--synthetic"]):
        with pytest.raises(SystemExit):
            parse_config(["--data", "m.json", "--out", "o", *bad])
    assert parse_config(["--data", "m.json", "--out", "o", "--flip-lr", "0.5"]).flip_lr == 0.5
