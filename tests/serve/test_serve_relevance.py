"""Relevance over HTTP: the served maps lie on each scan's own voxel grid and equal the engine's to 1e-5,
read back by the torch-free client (hlip_engine.remote) exactly as the plugin overlays a local result."""
from __future__ import annotations

import io
import json
import zipfile

import httpx
import numpy as np


def test_relevance_zip_equals_the_engine_on_every_scan(server, library, local):
    import nibabel as nib

    from hlip_engine.io import load_study
    from hlip_engine.relevance import relevance
    from hlip_engine.relevance.export import LPS_TO_RAS
    from hlip_engine.remote import RemoteEngine

    rec = next(r for r in library["records"] if r["modality"] == "MR" and r["findings"])
    study = load_study(rec["path"])
    want = relevance(local["model"], local["model"].prepare(study), "glioma", templates=["This MRI study shows: {}."])

    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=300) as http:
        r = http.post("/v1/relevance", params=[("prompt", "glioma"), ("template", "This MRI study shows: {}.")],
                      json={"study_uid": rec["uid"]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip", r.text
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    doc = json.loads(archive.read("relevance.json"))
    np.testing.assert_allclose(doc["scan_importance"], want.scan_importance, atol=1e-5)
    assert doc["peak_slices"] == want.peak_slices() and doc["volume_scans"] == want.volume_scans
    assert doc["peak"] == {"scan": want.peak()[0], "voxel": list(want.peak()[1])}
    assert doc["method"] == want.method and abs(doc["logit"] - want.logit) < 1e-4
    assert len(doc["nifti"]) == len(want.volumes) and set(doc["nifti"]) < set(archive.namelist())
    for entry, k, volume in zip(doc["scans"], want.volume_scans, want.volumes):
        scan = study.scans[k]
        img = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(archive.read(entry["file"])))
        assert entry["scan"] == k and tuple(entry["shape"]) == scan.voxels.shape
        np.testing.assert_allclose(img.affine, LPS_TO_RAS @ scan.affine, atol=1e-4)  # the scan's own grid
        np.testing.assert_allclose(np.asarray(img.dataobj).transpose(2, 1, 0), volume, atol=1e-5)

    # the client: an upload this time, read back into a Relevance-like result
    client = RemoteEngine(server.url, server.token)
    got = client.relevance(rec["path"], "glioma", templates=["This MRI study shows: {}."])
    assert got.volume_scans == want.volume_scans and got.scan_indices == want.scan_indices
    for a, b in zip(got.volumes, want.volumes):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(got.display_volumes(), want.display_volumes()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(got.tokens, want.tokens, atol=1e-5)
    np.testing.assert_allclose(got.scan_importance, want.scan_importance, atol=1e-5)
    np.testing.assert_allclose(got.slice_profiles, want.slice_profiles, atol=1e-5)
    assert got.peak() == want.peak() and got.peak_slices() == want.peak_slices()
    order, totals = got.source_importance()
    assert order == want.source_importance()[0]
    np.testing.assert_allclose(totals, want.source_importance()[1], atol=1e-5)
    assert got.prompt == want.prompt and got.method == want.method
    assert list(server.tmp_dir.iterdir()) == []


def test_relevance_of_head_ct_and_rollout_and_bad_requests(server, library, local):
    from hlip_engine.io import load_study
    from hlip_engine.relevance import relevance
    from hlip_engine.remote import EngineError, RemoteEngine

    client = RemoteEngine(server.url, server.token)
    rec = next(r for r in library["records"] if r["modality"] == "CT")
    study = load_study(rec["path"])
    want = relevance(local["model"], local["model"].prepare(study), "haemorrhage", method="rollout")
    got = client.relevance(study, "haemorrhage", method="rollout")  # a loaded Study: its files are sent
    assert got.method == "rollout" and got.volume_scans == want.volume_scans
    for a, b in zip(got.volumes, want.volumes):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # rollout maps have plateaus: the peak voxel may be another of equal value, never a different scan
    (k, got_voxel), (want_k, want_voxel) = got.peak(), want.peak()
    assert k == want_k and got_voxel == want_voxel  # the same hot spot (the engine's peak rule, client side)
    volume = want.volumes[want.volume_scans.index(want_k)]
    top = np.unravel_index(int(np.argmax(volume)), volume.shape)
    assert got.peak(centre_of_mass=False) == (k, tuple(int(v) for v in top))

    for kwargs, words in (({"prompt": "glioma", "method": "guesswork"}, "unknown relevance method"),
                          ({"prompt": "   "}, "prompt"),
                          ({"prompt": "glioma", "templates": ["no slot"]}, "template"),
                          ({"prompt": "x" * 2001}, "prompt")):
        try:
            client.relevance(study_uid=rec["uid"], **kwargs)
        except EngineError as e:
            assert e.status == 422 and e.kind == "bad_request" and words in e.reason, e.reason
        else:
            raise AssertionError(f"{kwargs} was accepted")
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
        r = http.post("/v1/relevance", json={"study_uid": rec["uid"]})  # no prompt at all
        assert r.status_code == 422 and "prompt" in r.json()["detail"]
        r = http.post("/v1/relevance?prompt=glioma&output=7", json={"study_uid": rec["uid"]})
        assert r.status_code == 422 and "output" in r.json()["detail"]
