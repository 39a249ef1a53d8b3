"""Clear errors for studies a recipe cannot take, and the default recipe of a study."""
import numpy as np
import pytest

from hlip_engine.preprocessing import preprocess, recipe_for
from hlip_engine.study import Scan, Study


def scan(modality="MR", shape=(8, 16, 16), spacing=(5.0, 0.9, 0.9), fill=100.0, description="T1", **attrs):
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    return Scan(np.full(shape, fill, np.float32), affine, modality=modality, description=description,
                attributes=attrs)


def test_empty_study_names_the_study_and_what_was_skipped():
    study = Study("1.2.3", [], skipped=[("scout", "localizer")])
    with pytest.raises(ValueError, match=r"1\.2\.3.*no scans.*scout: localizer"):
        preprocess(study, "brain-mri")


def test_wrong_modality_names_study_scan_and_recipe():
    study = Study("1.2.9", [scan("MR"), scan("CT", description="HEAD CT")])
    with pytest.raises(ValueError, match=r"1\.2\.9: scan 1 \(HEAD CT\) is CT; recipe 'brain-mri' takes MR"):
        preprocess(study, "brain-mri")
    with pytest.raises(ValueError, match="recipe 'chest-ct' takes CT"):
        preprocess(Study("x", [scan("MR")]), "chest-ct")


def test_bad_voxels_and_options_are_reported():
    nan = scan()
    nan.voxels[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="scan 0 .*non-finite"):
        preprocess(Study("s", [nan]), "brain-mri")
    with pytest.raises(ValueError, match="unknown preprocessing recipe 'knee-mri'"):
        preprocess(Study("s", [scan()]), "knee-mri")
    with pytest.raises(ValueError, match=r"no option\(s\) \['slice'\]"):
        preprocess(Study("s", [scan()]), "brain-mri", slice=16)
    with pytest.raises(ValueError, match="crop 64 is larger than size 32"):
        preprocess(Study("s", [scan()]), "brain-mri", size=32, crop=64)
    with pytest.raises(ValueError, match="positive integer"):
        preprocess(Study("s", [scan()]), "brain-mri", slices=0)
    with pytest.raises(ValueError, match="orientation 'RPX'"):
        preprocess(Study("s", [scan()]), "brain-mri", orient="RPX", slices=4, size=16, crop=16)
    with pytest.raises(ValueError, match="empty axis"):
        preprocess(Study("s", [scan("CT", shape=(2, 16, 16), spacing=(1.0, 1.0, 1.0))]), "chest-ct")


def test_constant_scan_and_single_slice_still_prepare():
    p = preprocess(Study("s", [scan(shape=(1, 10, 12))]), "brain-mri", slices=4, size=16, crop=8)
    assert p.tensor.shape == (1, 1, 4, 8, 8)
    assert np.allclose(p.tensor.numpy(), (0 - 0.449) / 0.226, atol=1e-6)  # (x - min) / (0 + 1e-8) = 0


def test_recipe_for_reads_modality_body_part_description_then_field_of_view():
    assert recipe_for(Study("a", [scan("MR")])) == "brain-mri"
    assert recipe_for(Study("b", [scan("CT", BodyPartExamined="HEAD")])) == "head-ct"
    assert recipe_for(Study("c", [scan("CT", BodyPartExamined="CHEST")])) == "chest-ct"
    assert recipe_for(Study("d", [scan("CT", description="CT THORAX W/O")])) == "chest-ct"
    assert recipe_for(Study("e", [scan("CT", description="CT BRAIN")])) == "head-ct"
    small = scan("CT", shape=(30, 512, 512), spacing=(5.0, 0.45, 0.45), description="")
    large = scan("CT", shape=(30, 512, 512), spacing=(5.0, 0.75, 0.75), description="")
    assert recipe_for(Study("f", [small])) == "head-ct" and recipe_for(Study("g", [large])) == "chest-ct"
    guessed = scan("", fill=-1000.0, modality_guess="CT", BodyPartExamined="")
    assert recipe_for(Study("h", [guessed], description="chest")) == "chest-ct"
    with pytest.raises(ValueError, match="no default recipe for modalities"):
        recipe_for(Study("i", [scan("MR"), scan("CT")]))
    with pytest.raises(ValueError, match="unknown"):
        recipe_for(Study("j", [scan("")]))
    p = preprocess(Study("k", [scan("MR")]), slices=4, size=16, crop=16)  # recipe from recipe_for
    assert p.recipe == "brain-mri" and p.labels == ["T1"]
