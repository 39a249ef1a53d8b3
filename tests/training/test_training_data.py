"""Manifest reading (official layout), uncurated scan sampling, report text, resumable batches."""
import json
from collections import Counter

import pytest
import torch

from training.data import (
    IMAGE_MEAN,
    IMAGE_STD,
    StudyBatches,
    StudyDataset,
    fit_to_size,
    load_manifest,
    split_sentences,
)
from training.synthetic import SyntheticStudies

SIZE = (16, 32, 32)


@pytest.fixture
def official_cache(tmp_path):
    """The official brain-MRI layout: ROOT/<study>/<series>/img.pt, uint8 [D, H, W]; manifest beside."""
    manifest = {}
    for sid, n in [("BRAIN_A", 1), ("BRAIN_B", 3), ("BRAIN_C", 12)]:
        series = {}
        for k in range(n):
            name = f"AX_T{k}"
            x = torch.full((16, 36, 36), 10 * k, dtype=torch.uint8)  # 36 = within the 256->224 crop margin
            (tmp_path / "data" / sid / name).mkdir(parents=True)
            torch.save(x, tmp_path / "data" / sid / name / "img.pt")
            series[name] = {"num_slices": 16, "view": "axial"}
        manifest[sid] = {"series": series, "report_length": 9,
                         "report": ["First finding.", "Second finding.", "Third finding."]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(manifest))
    return path, tmp_path / "data"


def scan_ids(scans: torch.Tensor) -> list[int]:
    """Which AX_T<k> each drawn scan is (its constant value encodes k)."""
    values = scans[:, 0, 0, 0, 0] * IMAGE_STD + IMAGE_MEAN
    return [round(float(v) * 255 / 10) for v in values]


def test_training_draws_a_fixed_number_of_scans_repeating_when_fewer(official_cache):
    path, root = official_cache
    ds = StudyDataset(path, root=root, num_scans=8, train=True, size=SIZE, seed=3)
    for index, n in enumerate([1, 3, 12]):
        scans, report, i = ds[(index, 0)]
        assert i == index and tuple(scans.shape) == (8, 1, *SIZE)
        counts = Counter(scan_ids(scans))
        if n == 1:
            assert counts == {0: 8}
        elif n == 3:
            assert sorted(counts.values()) == [2, 3, 3]  # every scan, repeated to fill 8
        else:
            assert len(counts) == 8  # 8 different scans of the 12
        assert report.startswith("This MRI study shows: ")
        body = report[len("This MRI study shows: "):]
        assert sorted(split_sentences(body)) == ["First finding.", "Second finding.", "Third finding."]
    # reproducible per (study, epoch); another epoch draws again
    a, b, c = ds[(2, 0)], ds[(2, 0)], ds[(2, 1)]
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert scan_ids(a[0]) != scan_ids(c[0]) or a[1] != c[1]


def test_evaluation_uses_every_scan_in_order_and_the_report_as_written(official_cache):
    path, root = official_cache
    ds = StudyDataset(path, root=root, train=False, size=SIZE)
    scans, report, _ = ds[2]
    assert scan_ids(scans) == list(range(12))
    assert report == "This MRI study shows: First finding. Second finding. Third finding."
    # values: uint8 / 255, centre-cropped 36 -> 32, then the paper's normalisation
    assert torch.allclose(scans[1], torch.full((1, *SIZE), (10 / 255 - IMAGE_MEAN) / IMAGE_STD))


def test_report_subsets_cut_training_reports_to_some_of_their_sentences(official_cache):
    path, root = official_cache
    whole = ["First finding.", "Second finding.", "Third finding."]
    ds = StudyDataset(path, root=root, num_scans=2, train=True, size=SIZE, seed=0, report_subsets=1.0)
    lengths = Counter()
    for epoch in range(30):
        body = ds[(2, epoch)][1][len("This MRI study shows: "):]
        sentences = split_sentences(body)
        assert sentences and set(sentences) <= set(whole) and len(set(sentences)) == len(sentences)
        lengths[len(sentences)] += 1
    assert set(lengths) == {1, 2, 3}  # any number of sentences, down to one
    plain = StudyDataset(path, root=root, num_scans=2, train=True, size=SIZE, seed=0)
    assert all(len(split_sentences(plain[(2, e)][1])) == 3 for e in range(5))  # all three kept
    fixed = StudyDataset(path, root=root, num_scans=2, train=True, size=SIZE, seed=0, shuffle_sentences=False)
    assert {fixed[(2, e)][1] for e in range(5)} == {"This MRI study shows: " + " ".join(whole)}  # as written
    evaluation = StudyDataset(path, root=root, train=False, size=SIZE, report_subsets=1.0)
    assert evaluation[2][1] == "This MRI study shows: " + " ".join(whole)  # evaluation text is never cut


def test_ct_rate_layout_is_windowed_from_hounsfield_units(tmp_path):
    folder = tmp_path / "train_7" / "train_7_a"
    folder.mkdir(parents=True)
    hu = torch.linspace(-1500, 500, 16 * 32 * 32).reshape(16, 32, 32)
    torch.save(hu, folder / "train_7_a_1.pt")
    path = tmp_path / "ct.json"
    path.write_text(json.dumps({"train_7_a": {"recons": ["train_7_a_1.nii.gz"], "report": "Lungs clear. No effusion."}}))
    ds = StudyDataset(path, root=tmp_path, train=False, size=SIZE, prefix="")
    scans, report, _ = ds[0]
    assert report == "Lungs clear. No effusion."
    x01 = scans[0, 0] * IMAGE_STD + IMAGE_MEAN
    expected = ((hu + 1150) / 1500).clamp(0, 1)
    torch.testing.assert_close(x01, expected, atol=1e-5, rtol=0)


def test_fit_to_size_crops_within_the_margin_and_resizes_otherwise():
    x = torch.arange(8 * 40 * 40, dtype=torch.float32).reshape(8, 40, 40)
    assert fit_to_size(x, (8, 40, 40)) is x
    assert fit_to_size(x[:, :36, :36], (8, 32, 32)).shape == (8, 32, 32)
    torch.testing.assert_close(fit_to_size(x[:, :36, :36], (8, 32, 32)), x[:, 2:34, 2:34])
    assert fit_to_size(x, (16, 20, 20)).shape == (16, 20, 20)


def test_bad_manifests_and_missing_tensors_are_named(tmp_path, official_cache):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        load_manifest(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_manifest(bad)
    bad.write_text(json.dumps({"S1": {"series": {"a": {}}}}))
    with pytest.raises(ValueError, match="'S1' has no 'report'"):
        load_manifest(bad)
    path, root = official_cache
    (root / "BRAIN_A" / "AX_T0" / "img.pt").unlink()
    with pytest.raises(FileNotFoundError, match="AX_T0/img.pt: scan tensor missing"):
        StudyDataset(path, root=root, train=False, size=SIZE)[0]


def test_batches_split_ranks_and_resume_mid_epoch():
    full = StudyBatches(20, 4, seed=1)
    assert len(full) == 5
    full.set_epoch(2)
    epoch = list(full)
    flat = [i for b in epoch for i, e in b]
    assert sorted(flat) == list(range(20)) and all(e == 2 for b in epoch for _, e in b)
    full.set_epoch(2, start_batch=3)
    assert list(full) == epoch[3:]  # the data position survives a restart
    ranks = [StudyBatches(20, 2, rank=r, world_size=2, seed=1) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    per_rank = [list(r) for r in ranks]
    assert [a + b for a, b in zip(*per_rank)] == epoch  # rank r takes its slice of each global batch
    with pytest.raises(ValueError, match="cannot fill one batch"):
        StudyBatches(3, 4)


def test_synthetic_studies_tie_images_to_reports():
    ds = SyntheticStudies(18, size=SIZE, num_scans=2)
    scans, report, _ = ds[(0, 0)]
    assert tuple(scans.shape) == (2, 1, *SIZE)
    assert ds.sentences(8) == ["No acute intracranial abnormality."]
    normal = ds.scan(8, 0)
    with_finding = ds.scan(0, 0)
    assert float(with_finding.std()) > 2 * float(normal.std())  # the findings are visible
    eval_ds = SyntheticStudies(18, size=SIZE, train=False)
    assert eval_ds[(5, 0)][0].shape[0] == ds.n_scans(5)
