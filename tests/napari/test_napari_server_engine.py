"""The plugin as a client of `hlip serve`: the real widgets under Xvfb against a real server process (the demo
model, an index built here), giving the same answers as this computer's engine; the server's errors as
notifications with their reason; and the client path without torch."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from server_helpers import (
    DEMO,
    in_memory_keyring,
    indexed_library,
    start_server,
    stop_server,
    use_server,
    use_this_computer,
)

from hlip_napari._launch import dock_widgets
from hlip_napari._reader import load_studies
from hlip_napari._show import show_study as add_studies
from hlip_napari._view import scan_layers

WAIT = 120_000  # ms


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """4 phantom studies (3 MR, 1 CT; real DICOM), their index built with the demo model, `hlip serve` on it."""
    lib = indexed_library(tmp_path_factory.mktemp("served"), 4)
    server = start_server(lib["root"] / "server", lib["index"])
    yield {**lib, "server": server}
    stop_server(server.proc)


@pytest.fixture
def memory_keyring():
    yield from in_memory_keyring()


@pytest.fixture
def notes():
    """Every napari notification's text, while the test runs."""
    from napari.utils.notifications import notification_manager

    messages: list[str] = []
    callback = lambda n: messages.append(str(n.message))  # noqa: E731
    notification_manager.notification_ready.connect(callback)
    yield messages
    notification_manager.notification_ready.disconnect(callback)


def _open(viewer, record) -> object:
    studies = load_studies(record["path"])
    add_studies(viewer, studies)
    return studies[0]


def _local(checkpoint) -> None:
    from hlip_napari._session import SETTINGS

    SETTINGS.update(checkpoint=str(checkpoint), text_model="", device="cpu")


def _demo_widget(make_napari_viewer, name: str):
    """(viewer, the plugin's ``name`` widget docked in it), the demo model set for this computer."""
    _local(DEMO)
    viewer = make_napari_viewer()
    return viewer, dock_widgets(viewer, (name,))[name]


def _forget_local_model() -> None:
    """So that a server run which loaded the model here would show (``_no_local_model``)."""
    from hlip_napari._session import INDEXES, MODELS

    MODELS.clear()
    INDEXES.clear()


def _no_local_model() -> bool:
    from hlip_napari._session import INDEXES, MODELS, SETTINGS

    return MODELS.peek(SETTINGS.settings) is None and INDEXES.peek(SETTINGS.settings.index) is None


def _wait_done(qtbot, widget, what):
    qtbot.waitUntil(lambda: not widget.job.running, timeout=WAIT)
    assert "failed" not in widget.status.text(), f"{what}: {widget.status.text()}"


# --- search ----------------------------------------------------------------------------------------
def test_search_and_more_like_this_through_the_server_equal_local(served, memory_keyring, make_napari_viewer,
                                                                  qtbot):
    server = served["server"]
    viewer, sw = _demo_widget(make_napari_viewer, "Search studies")
    sw.set_index(str(served["index"]))
    study = _open(viewer, served["records"][1])

    def run(action):
        sw.rows, sw.scores = [], []
        action()
        _wait_done(qtbot, sw, "search")
        return [r["study_uid"] for r in sw.rows], list(sw.scores), [r.get("path") for r in sw.rows]

    local_text = run(lambda: sw.search("mass with surrounding oedema"))
    local_like = run(sw.more_like_this)
    assert len(local_text[0]) == 4 and len(local_like[0]) == 3 and study.uid not in local_like[0]

    box = sw.model_box
    _forget_local_model()
    use_server(box, server.url, server.token)
    assert not box.checkpoint.isVisibleTo(box) and not box.device.isVisibleTo(box) and box.url.isVisibleTo(box)
    assert not sw.index_edit.isEnabled()  # the server searches its own index
    assert memory_keyring.store == {("hlip-napari", server.url): server.token}
    settings_files = "".join(p.read_text() for p in Path(os.environ["HLIP_NAPARI_CONFIG_DIR"]).glob("*.json"))
    assert server.url in settings_files and server.token not in settings_files  # the token: keyring only

    box.test()  # the status line says which model and index answer
    qtbot.waitUntil(lambda: not box.info_job.running, timeout=WAIT)
    assert "hlip_demo" in box.server_status.text() and "4 studies" in box.server_status.text()

    for here, action in ((local_text, lambda: sw.search("mass with surrounding oedema")),
                         (local_like, sw.more_like_this)):
        there = run(action)
        assert there[0] == here[0] and there[2] == here[2]  # same studies, same order
        np.testing.assert_allclose(there[1], here[1], atol=1e-5)
    assert "of 4 studies" in sw.status.text() and _no_local_model()  # the server answered, not this computer

    use_this_computer(box)  # and back: the checkpoint rows return
    assert box.checkpoint.isVisibleTo(box) and not box.url.isVisibleTo(box) and sw.index_edit.isEnabled()


# --- opening a hit --------------------------------------------------------------------------------------
def _layers_of_open_study(viewer):
    layers = scan_layers(viewer)
    return {layer.metadata["series_uid"]: (np.asarray(layer.data).copy(), np.asarray(layer.affine.affine_matrix),
                                           layer.metadata["source"], layer.metadata["study_uid"])
            for layer in layers}


def test_a_hit_double_clicked_in_server_mode_opens_the_servers_study(served, memory_keyring, make_napari_viewer,
                                                                      qtbot, monkeypatch):
    """A hit's path is a folder on the server: in server mode the hit is downloaded (GET /v1/studies/UID)
    into the plugin's cache, once, and opens with the same layers as the study opened on this computer."""
    from hlip_engine.remote import RemoteEngine

    server = served["server"]
    cache = Path(os.environ["HLIP_NAPARI_CACHE_DIR"])
    downloads: list[str] = []
    download = RemoteEngine.download_study
    monkeypatch.setattr(RemoteEngine, "download_study",
                        lambda self, uid, dest: (downloads.append(uid), download(self, uid, dest))[1])
    viewer = make_napari_viewer()
    sw = dock_widgets(viewer, ("Search studies",))["Search studies"]
    _forget_local_model()
    use_server(sw.model_box, server.url, server.token)
    sw.search("mass with surrounding oedema")
    _wait_done(qtbot, sw, "search")
    assert len(sw.rows) == 4
    hit = sw.rows[1]
    uid = hit["study_uid"]
    on_server = next(r for r in served["records"] if r["uid"] == uid)["path"]
    assert Path(hit["path"]) == Path(on_server)

    def double_click(row: int) -> dict:
        sw.status.setText("")
        sw.table.cellDoubleClicked.emit(row, 3)  # what a double-click on the row sends
        qtbot.waitUntil(lambda: sw.status.text().startswith("Opened") or "failed" in sw.status.text().lower(),
                        timeout=WAIT)
        qtbot.waitUntil(lambda: not sw.open.running, timeout=WAIT)
        assert sw.status.text().startswith("Opened"), sw.status.text()
        return _layers_of_open_study(viewer)

    there = double_click(1)
    folder = cache / "server-studies" / uid
    assert downloads == [uid] and folder.is_dir() and uid in sw.status.text() and server.url in sw.status.text()
    assert there and all(Path(src).is_relative_to(folder) for _d, _a, src, _u in there.values())  # the copy
    assert {u for *_x, u in there.values()} == {uid} and _no_local_model()  # the server's study; no model here
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no half-downloaded folder left

    again = double_click(1)  # an earlier download is reused
    assert downloads == [uid] and again.keys() == there.keys()

    # the downloads are bounded (HLIP_NAPARI_DOWNLOAD_CACHE_GB): another study opened evicts the least recent
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    monkeypatch.setenv("HLIP_NAPARI_DOWNLOAD_CACHE_GB", str(size * 1.5 / 2**30))
    other = sw.rows[2]["study_uid"]
    assert other != uid
    double_click(2)
    assert downloads == [uid, other] and (cache / "server-studies" / other).is_dir() and not folder.exists()

    use_this_computer(sw.model_box)  # this computer opens the hit from its own path
    here = double_click(1)
    assert here.keys() == there.keys() and len(here) > 0
    for series, (data, affine, src, _uid) in here.items():
        assert Path(src).is_relative_to(on_server)
        np.testing.assert_array_equal(there[series][0], data)
        np.testing.assert_allclose(there[series][1], affine, atol=1e-9)


def test_a_server_that_lacks_the_hit_says_so(served, memory_keyring, notes, make_napari_viewer, qtbot):
    server = served["server"]
    viewer = make_napari_viewer()
    sw = dock_widgets(viewer, ("Search studies",))["Search studies"]
    use_server(sw.model_box, server.url, server.token)
    sw.rows, sw.scores = [{"study_uid": "1.2.3.4.5.404", "path": "/nowhere", "description": "gone"}], [0.5]
    sw.open_result(0)
    qtbot.waitUntil(lambda: any("Open study failed" in m for m in notes), timeout=WAIT)
    failed = next(m for m in notes if "Open study failed" in m)
    assert "not in the index" in failed and "404" in failed
    assert not (Path(os.environ["HLIP_NAPARI_CACHE_DIR"]) / "server-studies" / "1.2.3.4.5.404").exists()
    qtbot.waitUntil(lambda: not sw.open.running, timeout=WAIT)


# --- zero-shot -------------------------------------------------------------------------------------
def test_zeroshot_through_the_server_equals_local(served, memory_keyring, make_napari_viewer, qtbot):
    server = served["server"]
    viewer, zs = _demo_widget(make_napari_viewer, "Zero-shot prompts")
    _open(viewer, served["records"][0])

    def classify(free: bool):
        if free:
            zs.prompt_set.setCurrentText("Free prompts")
            zs.mode.setCurrentIndex(zs.mode.findData("binary"))
            zs.prompts.setPlainText("Infarct: no infarct | acute infarct\nMass: no mass | a mass with oedema")
            zs.templates.setPlainText("This study shows: {}.")
        else:
            zs.prompt_set.setCurrentText("Model's default")
        zs.results = {}
        zs.run()
        _wait_done(qtbot, zs, "zero-shot")
        return dict(zs.results), zs.used

    local_default, local_free = classify(False), classify(True)
    assert local_default[1]["name"] == "hlip-demo-5" and len(local_free[0]) == 2
    _forget_local_model()
    use_server(zs.model_box, server.url, server.token)
    for here, free in ((local_default, False), (local_free, True)):
        there = classify(free)
        assert list(there[0]) == list(here[0]) and there[1] == here[1]  # same classes, same prompt set shown
        np.testing.assert_allclose(list(there[0].values()), list(here[0].values()), atol=1e-5)
    assert zs.table.rowCount() == 2 and len(zs.chart.values) == 2 and _no_local_model()


# --- relevance -------------------------------------------------------------------------------------
def test_relevance_overlays_from_the_server_land_on_the_same_voxels(served, memory_keyring, make_napari_viewer,
                                                                    qtbot):
    server = served["server"]
    viewer, rw = _demo_widget(make_napari_viewer, "Relevance map")
    study = _open(viewer, served["records"][1])
    rw.prompt.setText("mass with surrounding oedema")

    def overlays():
        rw.result = None
        rw.run()
        qtbot.waitUntil(lambda: rw.result is not None or "failed" in rw.status.text(), timeout=WAIT)
        assert rw.result is not None, rw.status.text()
        layers = scan_layers(viewer, study, kind="relevance")
        assert len(layers) == len(rw.result.volume_scans) > 0
        return ([np.asarray(layer.data, dtype=np.float32).copy() for layer in layers],
                [np.asarray(layer.affine.affine_matrix) for layer in layers], rw.peak(), list(rw.chart.values))

    here = overlays()
    _forget_local_model()
    use_server(rw.model_box, server.url, server.token)
    there = overlays()
    assert _no_local_model()
    for a, b in zip(here[0], there[0]):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=1e-5)
    for a, b in zip(here[1], there[1]):
        np.testing.assert_allclose(b, a)
    assert here[2][0] == there[2][0]
    np.testing.assert_allclose(there[2][1], here[2][1], atol=1e-6)  # the jump goes to the same point
    np.testing.assert_allclose(there[3], here[3], atol=1e-5)


# --- errors ----------------------------------------------------------------------------------------
def test_server_errors_are_notifications_with_the_reason(served, memory_keyring, notes, make_napari_viewer,
                                                         qtbot):
    server = served["server"]
    viewer = make_napari_viewer()
    widgets = dock_widgets(viewer, ("Search studies", "Zero-shot prompts"))
    sw, zs = widgets["Search studies"], widgets["Zero-shot prompts"]
    use_server(sw.model_box, server.url, "not-the-server-token-at-all")
    assert zs.model_box.url.text() == server.url and zs.model_box.is_server()  # one choice for all boxes
    sw.search("glioma")
    qtbot.waitUntil(lambda: any("Search failed" in m for m in notes), timeout=WAIT)
    failed = next(m for m in notes if "Search failed" in m)
    assert "(auth)" in failed and "refused the token" in failed and "401" in failed
    assert "Check the server token" in failed and "not-the-server-token" not in failed
    assert "failed" in sw.status.text()

    sw.model_box.test()
    qtbot.waitUntil(lambda: "Not answering" in sw.model_box.server_status.text(), timeout=WAIT)
    assert "refused the token" in sw.model_box.server_status.text()

    # a server that was running and is stopped: "down", with what to check
    other = start_server(served["root"] / "stopped", served["index"], name="stopped")
    stop_server(other.proc)
    use_server(sw.model_box, other.url, other.token)
    notes.clear()
    _open(viewer, served["records"][0])
    zs.prompt_set.setCurrentText("pub-brain-5")
    zs.run()
    qtbot.waitUntil(lambda: any("Zero-shot failed" in m for m in notes), timeout=WAIT)
    failed = next(m for m in notes if "Zero-shot failed" in m)
    assert "down" in failed and "not reachable" in failed and "`hlip serve` is running" in failed
    qtbot.waitUntil(lambda: not zs.job.running and not sw.job.running, timeout=WAIT)


def test_every_server_problem_names_its_kind_and_advice():
    from hlip_engine.remote import EngineError
    from hlip_napari._qt.jobs import message

    for kind, words in (("too_large", "too large"), ("busy", "busy"), ("auth", "auth"), ("down", "down")):
        text = message("Relevance", EngineError("the reason (413)", 413, kind))
        assert text.startswith("Relevance failed (") and words in text and "the reason (413)" in text
        assert EngineError("x", kind=kind).advice in text


# --- no torch --------------------------------------------------------------------------------------
def test_the_plugin_works_as_a_client_without_torch(served, tmp_path):
    """Torch blocked: every plugin module imports, the widgets' jobs answer via the server, and the widgets
    dock and open a study."""
    server, record = served["server"], served["records"][1]
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # importing torch now fails, as where it is not installed
        import keyring
        from server_helpers import MemoryKeyring
        keyring.set_keyring(MemoryKeyring())
        import hlip_napari, hlip_napari._launch, hlip_napari._reader, hlip_napari._layers
        from hlip_napari._qt import jobs, model_panel, pacs, search, study_browser, zeroshot, relevance, hanging
        from hlip_napari import _engine
        from hlip_napari.settings import ModelSettings

        def run(job):
            try:
                while True:
                    next(job)
            except StopIteration as done:
                return done.value

        choice = _engine.EngineSettings(kind="server", url={server.url!r})
        choice.save()
        _engine.save_token(choice.url, {server.token!r})
        study = hlip_napari._reader.load_studies({record["path"]!r})[0]
        model = ModelSettings()
        hits = run(search.search_job(model, "", "glioma", 3, {{}}, choice))
        like = run(search.search_job(model, "", study, 3))
        probs, bars, used = run(zeroshot.zeroshot_job(model, study, None, [], "softmax"))
        rel, volumes, chart = run(relevance.relevance_job(model, study, "glioma", None, 300, None, choice))
        assert len(hits["rows"]) == 3 and len(like["rows"]) == 3 and used["name"] == "hlip-demo-5"
        opened = run(search.open_job(hits["rows"][0], model, choice))  # a hit: downloaded, without torch
        assert len(opened) == 1 and opened[0].uid == hits["rows"][0]["study_uid"] and opened[0].scans
        assert abs(sum(probs.values()) - 1) < 1e-5 and len(volumes) == len(rel.volume_scans) > 0
        import napari
        from hlip_napari._launch import dock_widgets
        from hlip_napari._view import scan_layers
        viewer = napari.Viewer(show=False)
        docks = dock_widgets(viewer)       # every widget builds, the Model boxes show the server
        docks["Study browser"].add_studies([study])
        assert len(scan_layers(viewer, study)) == len(study.scans) > 0
        assert docks["Zero-shot prompts"].model_box.is_server() and not docks["Search studies"].index_edit.isEnabled()
        viewer.close()
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("ok", len(volumes))
    """)
    env = {**os.environ, "HLIP_NAPARI_CONFIG_DIR": str(tmp_path / "config"),
           "HLIP_NAPARI_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok ")


def test_without_an_os_keyring_the_token_lives_in_memory_only(tmp_path):
    import keyring
    from keyring.backends.fail import Keyring as NoKeyring

    from hlip_napari import _engine

    before = keyring.get_keyring()
    keyring.set_keyring(NoKeyring())
    try:
        assert _engine.save_token("http://gpu-box:8400/", "s3cret-token") is False  # not persisted anywhere
        assert _engine.load_token("http://gpu-box:8400") == "s3cret-token"
        assert not any("s3cret" in p.read_text() for p in tmp_path.rglob("*") if p.is_file())
        _engine.forget_token("http://gpu-box:8400")
        assert _engine.load_token("http://gpu-box:8400") == ""
    finally:
        keyring.set_keyring(before)


def test_downloaded_studies_are_evicted_least_recently_opened_first(tmp_path):
    """The plugin's downloaded studies fit the size bound: the least recently opened go first; the study
    being opened and downloads in progress (hidden folders) stay."""
    from hlip_napari._engine import evict_downloads

    root = tmp_path / "server-studies"
    for i, name in enumerate(["a", "b", "c", ".download-x"]):
        (root / name).mkdir(parents=True)
        (root / name / "1.dcm").write_bytes(b"x" * 1000)
        os.utime(root / name, (1000 + i, 1000 + i))  # a opened longest ago
    os.utime(root / "c", (900, 900))  # c: older still, but it is the one being opened
    gone = evict_downloads(root, 1500, keep=root / "c")
    assert gone == [root / "a", root / "b"]
    assert sorted(p.name for p in root.iterdir()) == [".download-x", "c"]
    assert evict_downloads(root, 10**6) == [] and evict_downloads(tmp_path / "none", 0) == []
