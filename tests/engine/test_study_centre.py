"""A model's study centre (HLIPModel.study_centre): cosine measured from the mean of its training studies,
set by ``python -m training.study_centre``, dropped when a model is trained further."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hlip_engine.demo import make_studies
from hlip_engine.demo.showcase import DEMO_MODEL
from hlip_engine.io import discover, load_study
from hlip_engine.model import create_model, load_model
from training.config import TrainConfig
from training.model_setup import build_model
from training.study_centre import main as study_centre_main


@pytest.fixture(scope="module")
def tiny():
    return create_model("hlip_tiny").eval()


def _scans(model, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    d, h, w = model.visual.cfg.input_size
    return torch.randn(b, 2, 1, d, h, w, generator=g)


def test_embedding_is_measured_from_the_centre(tiny):
    x = _scans(tiny)
    with torch.no_grad():
        raw = tiny.encode_image(x)
        assert tiny.study_centre is None and torch.equal(raw, tiny.encode_image(x, centre=False))
        centre = F.normalize(raw.mean(0), dim=0) * 0.8
        tiny.config["study_centre"] = centre.tolist()
        try:
            got = tiny.encode_image(x)
            torch.testing.assert_close(got, F.normalize(raw - centre, dim=-1))
            assert torch.allclose(got.norm(dim=-1), torch.ones(3))
            assert torch.equal(tiny.encode_image(x, centre=False), raw)  # what training uses
            assert torch.equal(tiny.encode_image(x, normalize=False), tiny.encode_image(x, normalize=False, centre=False))
            tiny.config["study_centre"] = [0.0, 1.0]
            with pytest.raises(ValueError, match="shape \\(2,\\).*embeddings have"):
                tiny.encode_image(x)
        finally:
            tiny.config.pop("study_centre")


def test_training_study_centre_command_and_round_trip(tmp_path, capsys):
    records = make_studies(tmp_path / "lib", 3, seed=11)
    bad = tmp_path / "lib" / "broken_nifti"                                 # a study that cannot be read
    bad.mkdir()
    with gzip.open(bad / "t1.nii.gz", "wb") as f:
        f.write(b"not a nifti file")
    out = tmp_path / "centred.safetensors"
    rc = study_centre_main([str(DEMO_MODEL), str(tmp_path / "lib"), "--out", str(out), "--studies", "10"])
    io = capsys.readouterr()
    assert rc == 0, io.err
    assert "skipped" in io.err and "broken_nifti" in io.err
    assert "study centre from 3 studies" in io.out
    model = load_model(out, device="cpu")
    plain = load_model(DEMO_MODEL, device="cpu")
    with torch.no_grad():
        raw = torch.stack([plain.encode_study(load_study(r["path"])) for r in records])
        torch.testing.assert_close(model.study_centre, raw.mean(0), atol=1e-5, rtol=0)
        got = model.encode_study(load_study(records[0]["path"]))             # the model's inference path
        torch.testing.assert_close(got, F.normalize(raw[0] - raw.mean(0), dim=0), atol=1e-5, rtol=0)
    # --remove writes it back without one; bad arguments are one clear line
    assert study_centre_main([str(out), "--remove", "--out", str(tmp_path / "plain.safetensors")]) == 0
    assert load_model(tmp_path / "plain.safetensors", device="cpu").study_centre is None
    assert study_centre_main([str(tmp_path / "nope.safetensors"), str(tmp_path / "lib"), "--out", str(out)]) == 2
    assert "nope.safetensors: no such model file" in capsys.readouterr().err
    assert len(discover(tmp_path / "lib")) == 4  # the broken folder was discovered, then skipped


def test_training_from_a_model_drops_its_centre(tmp_path, tiny):
    tiny.config["study_centre"] = [0.1] * tiny.embed_dim
    try:
        init = tiny.save(tmp_path / "init.safetensors")
    finally:
        tiny.config.pop("study_centre")
    assert load_model(init, device="cpu").study_centre is not None
    said = []
    model = build_model(TrainConfig(init=str(init)), log=said.append)
    assert model.study_centre is None and "study centre is dropped" in said[0]
    assert np.isfinite(model.encode_image(_scans(model)).detach().numpy()).all()
