"""`sim4seg app`: the real command serves a tiny checkpoint; Gradio's API answers through `gradio_client` (bad input
is one message and the app keeps serving); a headless Chromium (Debian's, driven by Playwright) loads the page,
uploads an image, asks, waits for the answer and the images, fails on console errors, and saves a screenshot."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import child_env
from PIL import Image
from test_predict import BUSI, tiny_run  # tests/ is on sys.path under pytest

from sim4seg.app import resolve_ckpt
from sim4seg.cli import main
from sim4seg.errors import UserError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, folder) of `sim4seg app --ckpt RUN` started as a user would, stopped after the module."""
    base = tmp_path_factory.mktemp("app")
    run = tiny_run(base, says_seg=True)  # answers with [SEG]: masks, region and SAM's IoU are shown
    port = free_port()
    log = open(base / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "sim4seg.cli", "app", "--ckpt", str(run), "--port", str(port),
                             "--max-new-tokens", "8"], stdout=log, stderr=subprocess.STDOUT,
                            env=child_env(GRADIO_ANALYTICS_ENABLED="False"))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the app did not start: {(base / 'app.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield url, base
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def picture(path: Path) -> Path:
    if BUSI.exists():  # a real ultrasound (beside the repository); else a synthetic one
        Image.open(BUSI).convert("RGB").save(path)
    else:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8)).save(path)
    return path


def test_gradio_client_answers_and_bad_input_is_one_message(server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, _ = server
    client = Client(url, verbose=False, download_files=str(tmp_path / "dl"))
    img = picture(tmp_path / "scan.png")
    answer_md, overlay, region, sam_iou, mask_png = client.predict(
        image=handle_file(str(img)), question="Where is the tumor? Is it benign or malignant?", api_name="/answer")
    assert answer_md.startswith("**Diagnosis:**") and "[SEG]" in answer_md and "<details>" in answer_md
    assert 0 < float(sam_iou) <= 1
    size = Image.open(img).size
    assert Image.open(overlay).size == size and Image.open(region).size == size
    mask = np.asarray(Image.open(mask_png))
    assert mask.shape == size[::-1] and set(np.unique(mask)) == {0, 255}

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    one = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((1, 1, 1), np.float32), np.eye(4)), one)
    cases = [(bad, "Where?", "broken.png: not a readable image"), (one, "Where?", "one.nii.gz: NIfTI volume has a "
             "single voxel"), (img, "  ", "the question is empty")]
    for path, question, expected in cases:
        with pytest.raises(AppError) as e:
            client.predict(image=handle_file(str(path)), question=question, api_name="/answer")
        assert expected in str(e.value) and "/tmp/gradio" not in str(e.value)
    # Still serving, and a DICOM with test-time scaling (m=2 paths, n=2 masks) works through the same endpoint.
    from test_readers import write_dicom

    dcm = write_dicom(tmp_path / "ct.dcm", np.full((40, 30), 1064, np.uint16), RescaleSlope=1, RescaleIntercept=-1024)
    out = client.predict(image=handle_file(dcm), question="Where is the lesion?", m=2, n=2, select="consensus",
                         frame=0, axis="axial", nifti_slice=-1, window="auto", api_name="/answer")  # as in README
    # 40 HU in the soft tissue window is 128 (test_readers): the picture under the mask and region shading.
    assert Image.open(out[1]).size == (30, 40) and np.asarray(Image.open(out[1]))[..., 1].max() == 128


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: install Debian's with `apt-get install chromium` "
                                             "(.ci/run does)")
def test_browser_upload_ask_answer(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, base = server
    img = picture(tmp_path / "scan.png")
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(url, wait_until="networkidle")
        page.locator("#image input[type=file]").set_input_files(str(img))
        question = page.locator("#question input")
        question.fill("Where is the tumor in this breast ultrasound image? Is it benign or malignant?")
        question.press("Enter")
        page.locator("#ask").click()
        page.locator("#answer").get_by_text("Diagnosis").wait_for(timeout=90_000)
        page.locator("#overlay img").wait_for(timeout=30_000)
        page.locator("#region img").wait_for(timeout=30_000)
        page.locator("#mask-file").get_by_text("scan_mask").wait_for(timeout=30_000)
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    print(f"screenshot: {shot}")
    assert not problems, problems
    assert Image.open(shot).size[0] == 1280


def test_app_without_ckpt_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="runs/demo does not exist: train the demo model with scripts/demo.sh"):
        resolve_ckpt(None)
    assert main(["app"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    assert resolve_ckpt(None) == Path("runs/demo")
