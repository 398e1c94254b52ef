"""The review page in a real headless browser (Debian's chromium through chromedriver): load a queue, play an
item, decide with the keyboard, reload and find the decisions kept, then apply the review to a manifest."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import uvicorn

from raymlc.data import normalize_manifest
from raymlc.reviewing import QUEUE_SCHEMA, DecisionLog, write_reviewed_manifest
from raymlc.serving.review_app import build_review_app

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)


def queue_and_manifest(root: Path) -> tuple[pa.Table, Path]:
    """Three queue items over three 2-s clips, the last one's audio missing, and the manifest they came from."""
    rng = np.random.default_rng(0)
    rows, clips = [], []
    for i, (label, current) in enumerate([("dog", ["cat"]), ("cat", []), ("dog", [])]):
        audio = root / f"clip{i}.wav"
        if i < 2:
            sf.write(audio, rng.uniform(-0.3, 0.3, 16000 * 2), 16000, subtype="PCM_16")
        rows.append(
            {"label": label, "rank": 1 + i // 2, "clip_id": f"clip{i}", "audio": str(audio), "start_s": 0.5}
            | {"end_s": 2.0, "score": 0.9 - i / 10, "margin": 1.0 - i / 10, "labels": current, "row_index": i}
        )
        clips.append({"clip_id": f"clip{i}", "audio": str(audio), "labels": current, "split": "train"})
    manifest = root / "manifest.parquet"
    pq.write_table(normalize_manifest(pa.Table.from_pylist(clips)), manifest)
    return pa.Table.from_pylist(rows, schema=QUEUE_SCHEMA), manifest


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """The review app on a free loopback port, in a thread; (base URL, decisions dir, manifest)."""
    queue, manifest = queue_and_manifest(tmp_path)
    decisions = tmp_path / "review"
    app = build_review_app(queue, DecisionLog(decisions), reviewer="ann")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the review app did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", decisions, manifest
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path: Path):
    os.environ["SE_OFFLINE"] = "true"  # selenium must not look for drivers or browsers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
        "--mute-audio", "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'chrome'}",
        "--window-size=1400,700",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(20)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 20) -> object:
    """Poll a JavaScript expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {script}: {driver.find_element('id', 'error').text!r}")


def decisions_on_page(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#items tr')].map(r => r.dataset.decision)")


def test_review_with_the_keyboard_survives_a_reload_and_applies(served, browser) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    base, decisions, manifest = served
    browser.get(base + "/")
    wait_for(browser, "document.getElementById('progress').textContent === '0 of 3 reviewed'")
    assert browser.find_element(By.ID, "reviewer").get_attribute("value") == "ann"
    rows = browser.find_elements(By.CSS_SELECTOR, "#items tr")
    assert "audio not found" in rows[2].text and not rows[2].find_elements(By.CSS_SELECTOR, "button.play")

    # Play the first item: the audio element gets the 1.5-s segment's bytes.
    rows[0].find_element(By.CSS_SELECTOR, "button.play").click()
    duration = wait_for(browser, "document.getElementById('player').readyState >= 1 && player.duration")
    assert duration == pytest.approx(1.5, abs=0.01)

    # P on the current (first) item, then A on the next one.
    ActionChains(browser).send_keys("p").perform()
    wait_for(browser, "document.getElementById('progress').textContent === '1 of 3 reviewed'")
    ActionChains(browser).send_keys("a").perform()
    wait_for(browser, "document.getElementById('progress').textContent === '2 of 3 reviewed'")
    assert decisions_on_page(browser) == ["present", "absent", ""]

    browser.refresh()
    wait_for(browser, "document.getElementById('progress').textContent === '2 of 3 reviewed'")
    assert decisions_on_page(browser) == ["present", "absent", ""]
    current = browser.find_element(By.CSS_SELECTOR, "#items tr.current")
    assert current.get_attribute("data-id") == "2"  # resumed at the first item not reviewed yet

    browser.find_element(By.CSS_SELECTOR, "#filter option[value='cat']").click()
    assert [r.text.split()[1] for r in browser.find_elements(By.CSS_SELECTOR, "#items tr")] == ["cat"]

    output = manifest.parent / "reviewed.parquet"
    summary = write_reviewed_manifest(str(manifest), decisions, output)
    rows = {row["clip_id"]: row for row in pq.read_table(output).to_pylist()}
    assert rows["clip0"]["labels"] == ["cat", "dog"] and rows["clip1"]["explicit_negatives"] == ["cat"]
    assert rows["clip2"]["labels"] == [] and (summary["accepted"], summary["rejected"]) == (1, 1)
