"""The web demo: the backend and the gradio handlers called directly, and the page driven in a real browser
(Debian's chromium through Playwright; skipped where chromium, playwright or gradio is missing)."""

from __future__ import annotations

import gc
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vitprobe as vp
from tests.corpus import make_bad_corpus
from vitprobe.cli import app
from vitprobe.web.app import (
    DISPLAY_MAX,
    DemoBackend,
    DemoError,
    View,
    click_to_patch,
    control_names,
    method_params,
    new_state,
)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """scikit-image's chelsea saved under a user's kind of file name."""
    data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("user") / "my holiday photo.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def backend(tiny_dirs, tmp_path_factory) -> DemoBackend:
    return DemoBackend((str(tiny_dirs["vit"]), str(tiny_dirs["deit"])), work_dir=tmp_path_factory.mktemp("web"))


def controls(spec: str, **changes) -> list:
    """Control values in ``control_names()`` order, the page's defaults unless changed (a parameter not named
    here: its method's default)."""
    values = {**{name: param.default for name, param in method_params().items()},
              "model": spec, "method": "cls", "layer": 2, "head": "fused", "head_fusion": "mean",
              "layer_fusion": "mean", "discard_ratio": 0.0, "patch": "", "query_xy": "",
              "target": "", "start_layer": 0, "artifacts": "keep", "alpha": 0.5,
              "cmap": "inferno", "clip": 99.0, "keypoints": False, **changes}
    return [values[name] for name in control_names()]


def test_models_only_from_the_allow_list(backend, tmp_path):
    with pytest.raises(DemoError, match="not offered"):
        backend.model("offline")
    broken = DemoBackend((str(tmp_path / "no-model"),), work_dir=tmp_path / "w")
    with pytest.raises(DemoError, match="cannot load model"):
        broken.model(str(tmp_path / "no-model"))


def test_upload_is_stored_under_a_generated_name(backend, photo):
    before = set((backend.work_dir / "uploads").iterdir())
    key = backend.store_upload(photo)
    added = set((backend.work_dir / "uploads").iterdir()) - before
    assert len(added) == 1
    stored = added.pop()
    assert re.fullmatch(r"[0-9a-f]{32}\.png", stored.name) and key == f"upload:{stored.stem}"
    assert not any("holiday" in p.name for p in backend.work_dir.rglob("*"))
    assert photo.exists()  # the user's own file is left alone
    np.testing.assert_array_equal(np.asarray(backend.image(key)), np.asarray(Image.open(photo).convert("RGB")))
    with pytest.raises(DemoError, match="no image"):
        backend.image("upload:../../etc/passwd")


def test_upload_limits_and_bad_images_give_one_line(tiny_dirs, photo, tmp_path):
    small = DemoBackend((str(tiny_dirs["vit"]),), work_dir=tmp_path / "w", max_upload_bytes=10_000)
    size = photo.stat().st_size / 2**20
    with pytest.raises(DemoError, match=rf"the upload is {size:.3g} MiB; the limit is 0.00954 MiB"):
        small.store_upload(photo)
    few = DemoBackend((str(tiny_dirs["vit"]),), work_dir=tmp_path / "w2", max_pixels=50_000)
    with pytest.raises(DemoError, match=r"too large \(451x300 = 0.1 Mpx > limit 50000 px\)"):
        few.store_upload(photo)
    plain = DemoBackend((str(tiny_dirs["vit"]),), work_dir=tmp_path / "w3")
    corpus = make_bad_corpus(tmp_path / "corpus")
    for name, reason in corpus.items():
        if reason is None:
            continue
        with pytest.raises(DemoError) as caught:
            plain.store_upload(tmp_path / "corpus" / name)
        message = str(caught.value)
        assert reason in message and "\n" not in message and name not in message  # no server path shown
    assert list((tmp_path / "w2" / "uploads").iterdir()) == list((tmp_path / "w3" / "uploads").iterdir()) == []


def cls_rows(model, img) -> torch.Tensor:
    """Every layer's per-head CLS attention over the patches (L, heads, H, W), from a plain capture."""
    cap = model.capture(img)
    return cap.cls[:, 0, :, 1:].reshape(cap.cls.shape[0], cap.cls.shape[2], *cap.layout.grid_hw)


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        (View("cls", {"layer": 1, "head": 2}), lambda m, img: cls_rows(m, img)[1, 2]),
        (View("cls", {"layer": -1, "head_fusion": "max"}), lambda m, img: cls_rows(m, img)[2].amax(0)),
        (View("query", {"layer": 0, "patch": (1, 2)}),
         lambda m, img: m.capture(img, full_layers=[0]).full[0][0, :, 1 + 1 * 4 + 2, 1:].mean(0).reshape(4, 4)),
        (View("rollout", {"head_fusion": "min", "discard_ratio": 0.5}),
         lambda m, img: vp.attribute(m, img, method="rollout", head_fusion="min", discard_ratio=0.5).maps[0]),
        (View("layers", {"layer_fusion": "max"}), lambda m, img: cls_rows(m, img).mean(1).amax(0)),
    ],
)
def test_render_draws_the_chosen_map(backend, tiny_dirs, photo, view, expected):
    spec = str(tiny_dirs["vit"])
    key = backend.store_upload(photo)
    rendered = backend.render(spec, key, view)
    model = backend.model(spec)
    torch.testing.assert_close(rendered.heat, expected(model, photo), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(rendered.arrays["map"], rendered.heat.numpy())
    assert rendered.grid_hw == (4, 4) and max(rendered.overlay.size) <= DISPLAY_MAX
    assert rendered.overlay.size == (451, 300)  # the tiny model resizes the whole photo: all of it is shown
    assert rendered.figure.axes  # a grid of panels


def test_render_rejects_bad_views(backend, tiny_dirs, photo):
    spec, key = str(tiny_dirs["vit"]), backend.store_upload(photo)
    for view, message in [(View("cls", {"head": 9}), "head 9 does not exist"),
                          (View("cls", {"layer": 5}), "layer 5 does not exist"),
                          (View("query", {"patch": (4, 0)}), "outside the 4x4 grid"),
                          (View("bogus"), "unknown method 'bogus'")]:
        with pytest.raises((ValueError, IndexError), match=re.escape(message)):
            backend.render(spec, key, view)


def test_captures_are_reused_across_layers_and_methods(backend, tiny_dirs, photo, monkeypatch):
    spec, key = str(tiny_dirs["vit"]), backend.store_upload(photo)
    model = backend.model(spec)
    backend.render(spec, key, View("cls", {"layer": 0}))
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda pixels: calls.append(1) or forward(pixels))
    for view in (View("cls", {"layer": 2}), View("layers", {"layer_fusion": "min"}), View("cls", {"head": 1})):
        backend.render(spec, key, view)
    assert calls == []  # every layer's CLS rows were recorded the first time
    backend.render(spec, key, View("rollout"))
    backend.render(spec, key, View("rollout", {"discard_ratio": 0.3}))
    assert len(calls) == 1


def test_click_to_patch_maps_pixels_to_the_grid():
    size, grid = (400, 300), (4, 4)  # (width, height), (H, W)
    assert click_to_patch((0, 0), size, grid) == (0, 0)
    assert click_to_patch((399.9, 299.9), size, grid) == (3, 3)
    assert click_to_patch((150, 80), size, grid) == (1, 1)
    assert click_to_patch((99, 226), size, grid) == (3, 0)
    assert click_to_patch((500, -3), size, grid) == (0, 3)  # clamped onto the grid


def test_downloads_hold_the_map_and_the_figure(backend, tiny_dirs, photo):
    rendered = backend.render(str(tiny_dirs["vit"]), backend.store_upload(photo), View("cls", {"head": 1}))
    npz_path, png_path = backend.downloads(rendered)
    with np.load(npz_path) as maps:
        np.testing.assert_array_equal(maps["map"], rendered.heat.numpy())
        np.testing.assert_array_equal(maps["heads"][1], rendered.heat.numpy())
        assert maps["heads"].shape == (4, 4, 4)
    with Image.open(png_path) as figure:
        assert figure.format == "PNG" and figure.width > 300


# --- gradio handlers, called directly ---


@pytest.fixture(scope="module")
def handlers(backend):
    pytest.importorskip("gradio")
    from vitprobe.web.app import DemoHandlers

    return DemoHandlers(backend)


def is_unchanged(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def test_upload_handler_draws_and_removes_gradios_copy_once_unused(handlers, tiny_dirs, photo, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.setattr(handlers, "copy_ttl_s", 600.0)
    copy = tmp_path / "gradio" / "3f2a" / photo.name  # where gradio puts an upload: <hash>/<client name>
    copy.parent.mkdir(parents=True)
    shutil.copy(photo, copy)
    state, overlay, figure, status, files = handlers.upload(str(copy), new_state(), *controls(str(tiny_dirs["vit"])))
    assert copy.exists()  # another client's queued request may name the same content-named copy
    monkeypatch.setattr(handlers, "copy_ttl_s", 0.2)
    assert "CLS attention" in handlers.upload(str(copy), new_state(), *controls(str(tiny_dirs["vit"])))[3]
    for _ in range(200):  # then, unused for copy_ttl_s, the copy and its folder go (a bounded wait)
        if not copy.parent.exists():
            break
        time.sleep(0.05)
    assert not copy.parent.exists()
    assert state["image"].startswith("upload:") and state["shown"] == [451, 300, 4, 4]
    assert isinstance(overlay, Image.Image) and isinstance(figure, Image.Image)
    assert files["visible"] is False and files["value"] is None  # no stale downloads of another view
    assert re.fullmatch(r".*vit, 4×4 patches of 8 px: CLS attention, layer 2, heads fused by mean; values \S+ to "
                        r"\S+, colours saturate above the 99th percentile", status)
    handlers.upload(str(photo), new_state(), *controls(str(tiny_dirs["vit"])))
    assert photo.exists()  # a file outside gradio's upload folder is never deleted


def test_sample_handler_draws_a_sample_photo(handlers, tiny_dirs):
    pytest.importorskip("skimage")
    state, overlay, _, status, _ = handlers.sample("coffee", new_state(), *controls(str(tiny_dirs["vit"])))
    assert state["image"] == "sample:coffee" and overlay.size == (600, 400) and "CLS attention" in status
    out = handlers.sample("moon", new_state(), *controls(str(tiny_dirs["vit"])))
    assert out[3] == "**Error:** unknown sample 'moon'"


def test_bad_upload_shows_one_line_and_keeps_the_page(handlers, tiny_dirs, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture\n")
    state = {**new_state(), "image": "sample:chelsea"}
    out = handlers.upload(str(bad), state, *controls(str(tiny_dirs["vit"])))
    assert out[0] == state and all(is_unchanged(v) for v in (out[1], out[2], out[4]))
    assert out[3] == "**Error:** the upload cannot be used: not an image file"


def test_targets_naming_server_files_are_refused(handlers, tiny_dirs, photo):
    spec = str(tiny_dirs["vit"])
    state = handlers.upload(str(photo), new_state(), *controls(spec))[0]
    out = handlers.redraw(state, *controls(spec, method="legrad", target=f"image:{photo}"))
    assert out[3] == "**Error:** the demo does not read files on the server: give a class, 'self' or a text prompt"
    out = handlers.redraw(state, *controls(spec, method="legrad", target="self"))
    assert "its own embedding" in out[3] and out[1] is not None


def test_a_text_prompt_is_a_target_of_a_clip_model(photo, tmp_path):
    """The target box takes a prompt; each prompt draws its own map."""
    pytest.importorskip("gradio")
    from tests.test_families import FAMILIES, save_tokenizer
    from vitprobe.web.app import DemoHandlers

    torch.manual_seed(0)
    FAMILIES["clip"][0]().save_pretrained(tmp_path / "clip")
    save_tokenizer(tmp_path / "clip")
    spec = str(tmp_path / "clip")
    demo = DemoHandlers(DemoBackend((spec,), work_dir=tmp_path / "web"))
    state = demo.upload(str(photo), new_state(), *controls(spec, method="legrad", layer=1))[0]
    cat = demo.redraw(state, *controls(spec, method="legrad", layer=1, target="a photo of a cat"))
    car = demo.redraw(state, *controls(spec, method="legrad", layer=1, target="the car"))
    assert 'the prompt "a photo of a cat"' in cat[3] and 'the prompt "the car"' in car[3]
    assert not np.array_equal(np.asarray(cat[1]), np.asarray(car[1]))


def test_unexpected_failure_shows_no_traceback(handlers, tiny_dirs, monkeypatch):
    def explode(*args):
        raise RuntimeError("boom\n  File /secret/path.py, line 1")

    monkeypatch.setattr(handlers.backend, "render", explode)
    out = handlers.redraw({**new_state(), "image": "sample:chelsea"}, *controls(str(tiny_dirs["vit"])))
    assert out[3] == "**Error:** internal error (RuntimeError); see the server log"


def test_click_handler_switches_to_the_clicked_patch(handlers, tiny_dirs, photo):
    spec = str(tiny_dirs["vit"])
    state = handlers.upload(str(photo), new_state(), *controls(spec))[0]
    method, *updates = handlers.click((440, 10), state, *controls(spec, layer=1))
    state, overlay, _, status, _ = updates[-5:]
    shown = dict(zip(vp_params(), updates[:-5], strict=True))
    assert method == "query" and shown["patch"]["value"] == "0,3" and shown["patch"]["visible"]
    assert not shown["discard_ratio"]["visible"] and shown["layer"]["visible"]
    assert "attention of patch (row 0, col 3), layer 1, heads fused by mean" in status
    expected = vp.attribute(handlers.backend.model(spec), photo, method="query", layer=1, patch=(0, 3)).maps[0]
    drawn = handlers.backend.render(spec, state["image"], View("query", {"layer": 1, "patch": (0, 3)}))
    torch.testing.assert_close(drawn.heat, expected, rtol=0, atol=1e-6)


def vp_params() -> list[str]:
    from vitprobe.web.app import method_params

    return list(method_params())


def test_method_change_shows_only_its_controls(handlers, tiny_dirs, photo):
    spec = str(tiny_dirs["vit"])
    state = handlers.upload(str(photo), new_state(), *controls(spec))[0]
    *updates, state, _, _, status, _ = handlers.change_method(state, *controls(spec, method="rollout"))
    visible = {name for name, update in zip(vp_params(), updates, strict=True) if update["visible"]}
    assert visible == {"head_fusion", "discard_ratio", "artifacts"} and status.split(": ", 1)[1].startswith("rollout")
    *updates, _, _, _, status, _ = handlers.change_method(state, *controls(spec, method="legrad", start_layer=0))
    by_name = dict(zip(vp_params(), updates, strict=True))
    assert by_name["start_layer"]["value"] == 1 and by_name["start_layer"]["visible"]  # legrad's -2 of 3 layers
    assert "layers 1..2" in status
    *updates, _, _, _, status, _ = handlers.change_method(state, *controls(spec, method="flow", start_layer=1))
    assert dict(zip(vp_params(), updates, strict=True))["start_layer"]["value"] == 0 and "layers 0..2" in status


def test_model_change_fits_the_controls_and_download_handler(handlers, tiny_dirs, photo):
    vit, deit = str(tiny_dirs["vit"]), str(tiny_dirs["deit"])
    state = handlers.upload(str(photo), new_state(), *controls(vit))[0]
    layer, start, heads, state, _, _, status, _ = handlers.change_model(state, *controls(deit, head="3",
                                                                                          start_layer=5))
    assert layer["maximum"] == start["maximum"] == 2 and start["value"] == 2
    assert heads["choices"] == ["fused", "0", "1", "2", "3"]
    assert status.startswith(deit) and "head 3" in status
    files, message = handlers.download(state, *controls(deit))
    assert [Path(f).name for f in files["value"]] == ["maps.npz", "figure.png"] and files["visible"]
    assert "ready" in message
    out = handlers.change_model(state, *controls("offline"))
    assert out[6] == "**Error:** model 'offline' is not offered by this demo"


# --- the page in a real browser ---

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_in_a_real_browser(tiny_dirs, photo, tmp_path, monkeypatch):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("gradio")
    sync_api = pytest.importorskip("playwright.sync_api")
    from vitprobe.web import build_demo

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    demo = build_demo([str(tiny_dirs["vit"])], work_dir=tmp_path / "work")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, quiet=True)
    elsewhere: list[str] = []
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.set_default_timeout(30_000)
                page.on("request", lambda r: None if r.url.startswith((f"http://127.0.0.1:{port}", "data:", "blob:"))
                        else elsewhere.append(r.url))
                page.goto(f"http://127.0.0.1:{port}/")

                def overlay_after(old: str | None) -> tuple[str, np.ndarray]:
                    page.wait_for_function("old => { const i = document.querySelector('#overlay img');"
                                           " return i && i.src && i.src !== old; }", arg=old)
                    src = page.get_attribute("#overlay img", "src")
                    return src, np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))

                page.set_input_files("input[type=file]", str(photo))
                src_last, last_layer = overlay_after(None)
                assert "CLS attention, layer 2, heads fused by mean" in page.inner_text("#status")
                page.fill("#param-layer input[type=number]", "0")
                page.press("#param-layer input[type=number]", "Enter")
                src_first, first_layer = overlay_after(src_last)
                assert "CLS attention, layer 0, heads fused by mean" in page.inner_text("#status")
                assert first_layer.shape == last_layer.shape == (300, 451, 3)
                assert np.abs(first_layer.astype(float) - last_layer).mean() > 2  # another layer, another map
                box = page.locator("#overlay img").bounding_box()
                page.mouse.click(box["x"] + 0.1 * box["width"], box["y"] + 0.9 * box["height"])
                overlay_after(src_first)
                assert "attention of patch (row 3, col 0), layer 0" in page.inner_text("#status")
                assert page.is_checked("#method input[value='query']")
                page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
                (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
                page.set_input_files("input[type=file]", str(tmp_path / "bad.png"))
                page.wait_for_function("() => document.querySelector('#status').innerText.includes('Error')")
                assert page.inner_text("#status") == "Error: the upload cannot be used: not an image file"
                assert "Traceback" not in page.content()
            finally:
                browser.close()
    finally:
        demo.close()
    assert elsewhere == []  # nothing but the local server is contacted
    assert not any((tmp_path / "gradio").rglob("my holiday photo.jpg"))  # gradio's named copy is gone
    with Image.open(tmp_path / "demo.png") as shot:
        assert shot.width == 1280 and shot.height > 900


def start_serve(model_dir: Path, port: int, tmp_path: Path) -> tuple[subprocess.Popen, list[str]]:
    """`vitprobe serve` in a child process, its temporary files under tmp_path; its output lines are collected
    by a thread as they come."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "vitprobe", "serve", "--model", str(model_dir),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True).start()
    return server, lines


def stop_serve(server: subprocess.Popen, lines: list[str]) -> str:
    """SIGTERM, then everything the server printed."""
    server.terminate()
    server.wait(timeout=30)
    time.sleep(0.2)  # the reader thread takes the last lines
    return "".join(lines)


def test_serve_command_serves_the_page_on_localhost(tiny_dirs, tmp_path):
    pytest.importorskip("gradio")
    port = free_port()
    announced = f"vitprobe: demo on http://127.0.0.1:{port}/ offering {tiny_dirs['vit']}"
    server, lines = start_serve(tiny_dirs["vit"], port, tmp_path)
    try:
        for _ in range(240):  # bounded wait for the server to come up and say where (at most about a minute)
            if server.poll() is not None:
                pytest.fail(f"vitprobe serve exited with {server.returncode}: {''.join(lines)}")
            if announced in "".join(lines):
                break
            time.sleep(0.25)
        assert announced in "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10) as response:
            page = json.loads(response.read())
        assert page["title"] == "vitprobe"
        offered = [c["props"].get("choices") for c in page["components"] if c["props"].get("label") == "Model"]
        assert offered == [[[str(tiny_dirs["vit"])] * 2]]  # the allow-list: exactly the one spec given
        assert len(list(tmp_path.glob("vitprobe-serve-*"))) == 1
    finally:
        output = stop_serve(server, lines)
    assert server.returncode == 0 and "vitprobe: demo stopped" in output
    assert "Traceback" not in output and "share=True" not in output
    assert list(tmp_path.glob("vitprobe-serve-*")) == []  # stopped with SIGTERM: its files are gone


def test_serve_killed_while_starting_leaves_no_files(tiny_dirs, tmp_path):
    """SIGTERM while the model loads or the server starts: the same clean stop, no temporary files left."""
    pytest.importorskip("gradio")
    server, lines = start_serve(tiny_dirs["vit"], free_port(), tmp_path)
    for _ in range(240):  # wait until its temporary directory exists, i.e. it is past argument parsing
        if list(tmp_path.glob("vitprobe-serve-*")) or server.poll() is not None:
            break
        time.sleep(0.05)
    assert len(list(tmp_path.glob("vitprobe-serve-*"))) == 1
    output = stop_serve(server, lines)
    assert server.returncode == 0 and "vitprobe: demo stopped" in output and "Traceback" not in output
    assert list(tmp_path.glob("vitprobe-serve-*")) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--model", "/no/such/model"], "cannot load model '/no/such/model'"), (["--port", "0"], "--port must be")],
)
def test_serve_bad_options_fail_with_one_line(args, message):
    pytest.importorskip("gradio")
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_listen_all_warns_before_anything_else(tmp_path):
    pytest.importorskip("gradio")
    result = CliRunner().invoke(app, ["serve", "--listen-all", "--model", str(tmp_path / "no-model")])
    assert result.exit_code == 2
    warning, error = result.stderr.strip().splitlines()
    assert warning.startswith("vitprobe: warning: --listen-all serves the demo on every network interface")
    assert error.startswith("vitprobe: error: cannot load model")


def test_a_session_keeps_one_upload_and_its_end_removes_it(handlers, tiny_dirs, photo):
    uploads = handlers.backend.work_dir / "uploads"
    before = set(uploads.iterdir())
    state = handlers.upload(str(photo), new_state(), *controls(str(tiny_dirs["vit"])))[0]
    state = handlers.upload(str(photo), state, *controls(str(tiny_dirs["vit"])))[0]
    mine = set(uploads.iterdir()) - before
    assert len(mine) == 1 and state["image"] == f"upload:{mine.pop().stem}"  # the first one was removed
    handlers.forget(state)  # what gradio calls when the session ends
    assert set(uploads.iterdir()) == before
    handlers.forget({"image": "sample:chelsea"})  # samples and odd keys are left alone
    handlers.forget({"image": "upload:../../etc/passwd"})


LOAD_SCRIPT = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from gradio_client import Client, handle_file

def upload(_):
    started = time.monotonic()
    try:
        status = Client(sys.argv[1], verbose=False).predict(handle_file(sys.argv[2]), api_name="/upload")[2]
    except Exception as err:  # gradio's own refusal when its queue is full
        status = "refused: " + str(err).splitlines()[0]
    return status, time.monotonic() - started

with ThreadPoolExecutor(int(sys.argv[3])) as pool:
    print(json.dumps(list(pool.map(upload, range(int(sys.argv[3]))))))
"""


def test_twenty_simultaneous_uploads_all_get_an_answer(tiny_dirs, photo, tmp_path, monkeypatch):
    """A local load script (127.0.0.1, 20 clients at once, each bounded in time) against the demo: every upload
    is drawn or answered "busy" in one line, the server keeps serving, and nothing of the requests is kept."""
    pytest.importorskip("gradio")
    import tracemalloc

    from vitprobe.web import build_demo
    from vitprobe.web.app import BUSY

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    demo = build_demo([str(tiny_dirs["vit"])], work_dir=tmp_path / "work", samples=False, wait_s=5.0)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"

    def load(n: int) -> list[tuple[str, float]]:
        done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, url, str(photo), str(n)], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return [tuple(item) for item in json.loads(done.stdout)]

    try:
        load(3)  # warm up: caches, thread pools, the first figures
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        answers = load(20)
        gc.collect()
        kept = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
        tracemalloc.stop()
        statuses = [status for status, _ in answers]
        drawn = [s for s in statuses if "CLS attention, layer 2" in s]
        busy = [s for s in statuses if s == BUSY]
        refused = [s for s in statuses if s.startswith("refused:")]
        assert len(drawn) + len(busy) + len(refused) == 20, statuses
        assert drawn and all("\n" not in s and "internal error" not in s for s in statuses)
        assert max(seconds for _, seconds in answers) < 120
        assert kept < 5e6, kept  # the requests left less than 5 MB of Python objects behind
        status = load(1)[0][0]
        assert "CLS attention, layer 2" in status  # the server keeps serving
    finally:
        demo.close()
    assert not list((tmp_path / "gradio").rglob("my holiday photo.jpg"))  # gradio's named copies are gone
