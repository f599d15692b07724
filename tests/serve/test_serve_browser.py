"""End to end in headless Chromium: upload a zipped study to the viewer graded by a trained run (the shared
one-epoch `tiny_run`: the real predictor, not the labels), wait, read the grades; open a report file offline.
Screenshots go to the test's tmp folder and to $SPINEGRADE_ARTIFACTS when it is set."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from cdp_client import Chromium, find_chromium

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("headless Chromium not found: install Debian's chromium with `bash scripts/browser.sh`")
    return path


@pytest.fixture
def browser(chromium_binary, tmp_path):
    with Chromium(chromium_binary, tmp_path / "chromium-profile") as b:
        yield b


def _keep(path: Path) -> Path:
    folder = os.environ.get("SPINEGRADE_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server_url(tiny_run, tmp_path):
    """The viewer grading with a trained run, in uvicorn on a free local port, in a thread of this process."""
    import uvicorn

    from spinegrade.serve.app import create_app, model_predictor

    app = create_app(model_predictor(tiny_run), work_dir=tmp_path / "work", model_info={"name": tiny_run.name})
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > end or not thread.is_alive():
            raise RuntimeError("the viewer did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_upload_a_study_in_the_browser(browser, server_url, synth_zip, tmp_path):
    page = browser.page()
    page.goto(server_url + "/")
    assert page.evaluate("document.getElementById('disclaimer').textContent").startswith("Research use only")
    page.set_files("#file", [synth_zip])
    page.evaluate("document.getElementById('upload').click()")
    stages = page.wait_for("location.pathname.startsWith('/jobs/') && !!document.querySelector('table.grades')",
                           timeout=180, watch="(document.getElementById('status') || {}).textContent")
    assert any("..." in s for s in stages), stages  # the progress line was shown while it worked
    assert page.evaluate("document.querySelectorAll('table.grades tbody tr').length") == 5
    assert page.evaluate("document.querySelectorAll('table.grades tbody td').length") == 25
    # model grades, not labels: every cell names its condition and level and shows three probabilities
    assert page.evaluate("document.querySelectorAll('table.grades td[data-condition] .probs').length") == 25
    # and names the model behind it (the run's grader here: the run folder's name), or says it is the prior
    cells = page.evaluate("[...document.querySelectorAll('table.grades td[data-condition]')].map(td => "
                          "td.classList.contains('prior') ? 'prior' : (td.querySelector('.model') || {}).textContent)")
    assert len(cells) == 25 and "by run" in cells and set(cells) <= {"by run", "prior"}, cells

    # switch to one condition: its images show, the others hide. How many images it has depends on where the
    # (one-epoch) localiser put the levels, so the test asks for the sagittal key image at least.
    view = "spinal_canal_stenosis"
    page.evaluate(f"document.querySelector('label[for=\"v-{view}\"]').click()")
    page.wait_for(f"""(() => {{
        const imgs = [...document.querySelectorAll('.view-{view} img')];
        return imgs.length >= 1 && imgs.every(i => i.complete && i.naturalWidth > 0 && i.offsetParent !== null)
            && document.querySelector('.view-all').offsetParent === null;
    }})()""", timeout=30)
    shot = _keep(page.screenshot(tmp_path / "serve_result.png"))
    assert shot.stat().st_size > 20_000
    assert page.console_errors() == []
    assert all(u.startswith(server_url) for u in page.requested_urls())


def test_report_opens_offline_without_console_errors(browser, synth_study, synth_cohort, tmp_path):
    from spinegrade.report.html import write_report
    from spinegrade.serve.app import label_predictor

    report = write_report([label_predictor(synth_cohort)(synth_study)[0]], tmp_path / "report.html")
    page = browser.page()
    page.send("Network.emulateNetworkConditions",
              {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    page.goto(report.as_uri())
    page.wait_for("[...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=30)
    assert page.evaluate("document.images.length") == 8
    assert page.evaluate("document.querySelectorAll('table.grades tbody td').length") == 25
    shot = _keep(page.screenshot(tmp_path / "report.png"))
    assert shot.stat().st_size > 20_000
    assert page.console_errors() == []
    assert all(u.startswith(("file:", "data:")) for u in page.requested_urls())
