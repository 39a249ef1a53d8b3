"""The client side: hlip_engine.remote and the plugin's one engine interface (hlip_napari._engine) against
a real `hlip serve`: the same answers as this computer's engine, clear errors, no torch needed."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest


def test_client_errors_are_one_exception_with_the_reason(server, tmp_path):
    from hlip_engine.remote import EngineError, RemoteEngine

    with pytest.raises(EngineError) as e:
        RemoteEngine(server.url, "not-the-token-at-all").info()
    assert e.value.status == 401 and e.value.kind == "auth" and "refused the token" in e.value.reason
    assert "token" in e.value.advice and "not-the-token" not in repr(RemoteEngine(server.url, "not-the-token"))

    big = tmp_path / "big_study"
    big.mkdir()
    (big / "a.dcm").write_bytes(os.urandom(9 << 20))  # over the test server's 8 MB
    with pytest.raises(EngineError) as e:
        RemoteEngine(server.url, server.token).embed(big)
    assert e.value.status == 413 and e.value.kind == "too_large" and "too large" in e.value.reason

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EngineError) as e:
        RemoteEngine(f"http://127.0.0.1:{port}", "x" * 20, timeout=5).info()  # nothing listens there
    assert e.value.status is None and e.value.kind == "down" and "not reachable" in e.value.reason
    with pytest.raises(EngineError) as e:
        RemoteEngine("ftp://somewhere", "t")
    assert e.value.kind == "bad_request"
    with pytest.raises(EngineError) as e:
        RemoteEngine(server.url, server.token).zeroshot(tmp_path / "missing", prompt_set="pub-brain-5")
    assert "no such file" in e.value.reason
    with pytest.raises(EngineError) as e:
        RemoteEngine(server.url, server.token).zeroshot(study_uid="1.2.3.999", prompt_set="pub-brain-5")
    assert e.value.status == 404 and e.value.kind == "not_found"
    assert RemoteEngine(server.url.replace("http://", ""), "t").health() == {"status": "ok"}


def test_plugin_engine_local_and_server_agree(server, library, tmp_path, monkeypatch, memory_keyring,
                                              demo_checkpoint):
    monkeypatch.setenv("HLIP_NAPARI_CONFIG_DIR", str(tmp_path / "config"))
    from hlip_engine.io import load_study
    from hlip_napari import _engine
    from hlip_napari.settings import ModelSettings

    # the choice and the token are remembered: the URL in engine.json, the token in the keyring only
    _engine.EngineSettings(kind="server", url=server.url).save()
    with pytest.raises(_engine.EngineError) as e:
        _engine.current_engine()
    assert e.value.kind == "auth" and "no token" in e.value.reason
    _engine.save_token(server.url + "/", server.token)
    remote = _engine.current_engine()
    assert isinstance(remote, _engine.ServerEngine) and remote.client.token == server.token
    assert server.token not in (tmp_path / "config" / "engine.json").read_text()
    assert memory_keyring.store == {(_engine.KEYRING_SERVICE, server.url): server.token}

    here = _engine.current_engine(ModelSettings(checkpoint=str(demo_checkpoint), device="cpu",
                                                index=str(library["index"])), _engine.EngineSettings())
    assert isinstance(here, _engine.LocalEngine)
    assert remote.relevance_methods() == here.relevance_methods() and remote.prompt_sets() == here.prompt_sets()

    for query in ("glioma", "normal ageing brain"):
        a, b = here.search(query, k=5), remote.search(query, k=5)
        assert a["hits"] == b["hits"] and a["query"] == b["query"] and a["size"] == b["size"] == 6
    rec = library["records"][0]
    study = load_study(rec["path"])
    a, b = here.search(study, k=3), remote.search(study, k=3)
    assert [h["study_uid"] for h in a["hits"]] == [h["study_uid"] for h in b["hits"]]
    np.testing.assert_allclose([h["score"] for h in a["hits"]], [h["score"] for h in b["hits"]], atol=1e-5)

    np.testing.assert_allclose(remote.embed(study), here.embed(study), atol=1e-5)
    spec = {"prompts": {"tumour": ["glioma", "meningioma"], "normal": ["no abnormality"]},
            "templates": ["This MRI study shows: {}."], "mode": "softmax"}
    a, b = here.zeroshot(study, **spec), remote.zeroshot(study, **spec)
    assert list(a["probabilities"]) == list(b["probabilities"]) and a["mode"] == b["mode"]
    np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-5)
    binary = {"prompts": {"Bleed": ("No hemorrhage.", "Hemorrhage.")}, "mode": "binary"}
    np.testing.assert_allclose(list(here.zeroshot(study, **binary)["probabilities"].values()),
                               list(remote.zeroshot(study, **binary)["probabilities"].values()), atol=1e-5)

    a, b = here.relevance(study, "infarct"), remote.relevance(study, "infarct")
    assert a.volume_scans == b.volume_scans and a.peak() == b.peak() and a.peak_slices() == b.peak_slices()
    from hlip_napari._layers import relevance_layer_data

    for k, x, y in zip(a.volume_scans, a.display_volumes(), b.display_volumes()):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, atol=1e-5)
        # the plugin's overlay layers (data + placement) are the same for a local and a served result
        here_data, here_kw, _ = relevance_layer_data(study, k, x, "infarct", colormap="inferno")
        there_data, there_kw, _ = relevance_layer_data(study, k, y, "infarct", colormap="inferno")
        np.testing.assert_allclose(there_data, here_data, atol=1e-5)
        np.testing.assert_allclose(there_kw["affine"], here_kw["affine"])
    _engine.forget_token(server.url)
    assert _engine.load_token(server.url) == ""


def test_client_without_torch(server, library, tmp_path):
    """A workstation with no torch: the client and the plugin's ServerEngine still answer every question."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # importing torch now fails, as where it is not installed
        from hlip_engine.io import load_study
        from hlip_napari._engine import ServerEngine
        engine = ServerEngine({server.url!r}, {server.token!r})
        study = load_study({library["records"][1]["path"]!r})
        hits = engine.search("glioma", k=3)["hits"]
        probs = engine.zeroshot(study, prompt_set="pub-brain-5")["probabilities"]
        rel = engine.relevance(study, "glioma")
        vec = engine.embed(study)
        assert len(hits) == 3 and abs(sum(probs.values()) - 1) < 1e-5 and rel.volumes and vec.shape == (256,)
        assert rel.peak() is not None and "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("ok", len(rel.volumes), engine.relevance_methods() and "methods")
    """)
    env = {**os.environ, "HLIP_NAPARI_CONFIG_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok ") and "methods" in out.stdout
