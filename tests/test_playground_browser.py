"""End to end in a real browser: ``seqlm train`` a tiny run, ``seqlm serve`` it, and drive
every tab of the page with headless Chromium (Debian's chromium + chromium-driver).

Skips only when Selenium or Chromium is not installed. ``SEQLM_SCREENSHOTS=DIR`` keeps a
screenshot of each tab there (docs/img/playground-*.png come from this test), and
``SEQLM_PLAYGROUND_RUN=DIR`` serves (a copy of) that run instead of training a tiny one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

import seqlm
from conftest import TINY_TEXT

webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("fastapi")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900")
TINY_TRAIN = ["--cell", "gru", "--hidden-size", "24", "--embedding-dim", "8", "--batch-size",
              "8", "--num-steps", "16", "--max-steps", "40", "--eval-every", "20",
              "--log-every", "5", "--sample-tokens", "20", "--split", "0.8,0.2,0"]
# Non-white pixels of a canvas, counted in the page.
INK = """const c = document.getElementById(arguments[0]);
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 240 || d[i+1] < 240 || d[i+2] < 240) n++;
return n;"""


def _chromium() -> tuple[str, str]:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
    if not browser or not driver:
        pytest.skip("no Chromium here: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run does it)")
    return browser, driver


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("playground")
    given = os.environ.get("SEQLM_PLAYGROUND_RUN")
    if given:  # a copy: the test appends to its metrics.jsonl
        return Path(shutil.copytree(given, root / Path(given).name))
    from seqlm.cli import main

    (root / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    assert main(["train", "--corpus", str(root / "tiny.txt"), "--out", str(root / "tiny"),
                 *TINY_TRAIN, "--json"]) == 0
    return root / "tiny"


@pytest.fixture(scope="module")
def server(run_dir):
    """``seqlm serve RUN RUN/checkpoints/last --port 0`` in a subprocess; yields its URL."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "seqlm", "serve", str(run_dir),
                             str(run_dir / "checkpoints" / "last"), "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        pytest.fail(f"seqlm serve did not start: {line}{proc.stderr.read()}")
    url = line.split()[2]
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="seqlm-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _tab(driver, name: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#tabs button[data-tab="{name}"]').click()


def _type(driver, element_id: str, text: str) -> None:
    box = driver.find_element(By.ID, element_id)
    box.clear()
    box.send_keys(text)


def _shot(driver, name: str, tmp_path: Path) -> None:
    keep = os.environ.get("SEQLM_SCREENSHOTS")
    folder = Path(keep) if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"playground-{name}.png"
    driver.save_screenshot(str(path))
    if keep:  # kept for the docs: 256 colours keep each under ~150 KB
        from PIL import Image

        with Image.open(path) as image:
            small = image.convert("RGB").quantize(colors=256)
        small.save(path, optimize=True)


def _queue(url: str) -> dict:
    with urllib.request.urlopen(f"{url}api/runs", timeout=10) as answer:
        return json.load(answer)["queue"]


def test_every_tab_in_a_real_browser(server, browser, run_dir, tmp_path):
    proc, url = server
    d = browser
    wait = WebDriverWait(d, 20)
    d.get(url)
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#run option")) == 2)

    # Generate, two runs side by side: tokens stream in coloured; hover shows the top 10.
    _type(d, "prefix", "the time ")
    _type(d, "max_new_tokens", "60")
    d.find_element(By.CSS_SELECTOR, "#run_b option:nth-child(3)").click()
    d.find_element(By.ID, "generate").click()
    wait.until(lambda _: all("60 tokens" in s.text for s in
                             d.find_elements(By.CSS_SELECTOR, "#gen-panels .stats"))
               and len(d.find_elements(By.CSS_SELECTOR, "#gen-panels .stats")) == 2)
    panels = d.find_elements(By.CSS_SELECTOR, "#gen-panels .panel")
    new = panels[0].find_elements(By.CSS_SELECTOR, ".tok:not(.warm)")
    warm = panels[0].find_elements(By.CSS_SELECTOR, ".tok.warm")
    assert len(new) == 60 and len(warm) == len("the time ")
    assert all("rgb" in t.value_of_css_property("background-color") and
               t.value_of_css_property("background-color") != "rgba(0, 0, 0, 0)" for t in new)
    ActionChains(d).move_to_element(new[10]).perform()
    tip = d.find_element(By.ID, "tooltip")
    wait.until(lambda _: tip.is_displayed())
    assert "entropy" in tip.text and len(tip.find_elements(By.CSS_SELECTOR, "tr")) == 10
    _shot(d, "generate", tmp_path)

    # Score a text: surprisal colouring, perplexity, an unknown token marked.
    _tab(d, "score")
    text = ("the time traveller (for so it will be convenient to speak of him) was "
            "expounding a recondite matter to us. his grey eyes shone жз and twinkled")
    known = seqlm.load(run_dir).tokenizer.vocab.token_to_idx
    _type(d, "score-text", text)
    d.find_element(By.ID, "score").click()
    wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#score-tokens .tok"))
    assert "perplexity" in d.find_element(By.ID, "score-summary").text
    unknown = sum(ch not in known for ch in text)
    assert unknown >= 2 and len(d.find_elements(By.CSS_SELECTOR, "#score-tokens .tok.unk")) \
        == unknown
    _shot(d, "score", tmp_path)
    d.find_element(By.CSS_SELECTOR, '#score-colour option[value="bigram"]').click()
    assert "bigram" in d.find_element(By.ID, "score-legend").text

    # Inside the state: the scored text's heatmap; clicking a row picks that unit.
    d.find_element(By.ID, "score-inspect").click()
    wait.until(lambda _: "text coloured by" in d.find_element(By.ID, "unit-label").text)
    assert d.execute_script(INK, "heatmap") > 100
    before = d.find_element(By.ID, "unit-label").text
    canvas = d.find_element(By.ID, "heatmap")
    height = canvas.size["height"]
    for offset in (0.1, 0.9):  # two rows far apart: at least one differs from the first pick
        ActionChains(d).move_to_element_with_offset(
            canvas, 0, int(height * (offset - 0.5))).click().perform()
        if d.find_element(By.ID, "unit-label").text != before:
            break
    assert d.find_element(By.ID, "unit-label").text != before
    space_unit = d.find_element(By.CSS_SELECTOR, "#rankings > div:last-child li")
    layer_unit = space_unit.text.split(" · ")[0]  # e.g. "L0 u19"
    space_unit.click()  # the unit that tracks "after a space" colours the text
    label = d.find_element(By.ID, "unit-label").text
    assert label.endswith(f"layer {layer_unit[1:].split()[0]}, unit {layer_unit.split('u')[-1]}")
    d.execute_script("document.getElementById('state-note').scrollIntoView()")
    _shot(d, "state", tmp_path)
    d.execute_script("window.scrollTo(0, 0)")

    # Through time: the per-lag gradient norms drawn on a log scale.
    _tab(d, "time")
    d.find_element(By.ID, "gradients").click()
    wait.until(lambda _: "k=0" in d.find_element(By.ID, "time-note").text)
    assert d.execute_script(INK, "time-chart") > 100
    _shot(d, "time", tmp_path)

    # Training: curves and samples, refreshed while the run's metrics grow.
    _tab(d, "training")
    status = d.find_element(By.ID, "train-status")
    wait.until(lambda _: "records" in status.text)
    count = int(status.text.split()[0])
    assert d.execute_script(INK, "chart-ppl") > 100 and "step" in d.find_element(
        By.ID, "samples").text
    _shot(d, "training", tmp_path)
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:  # training goes on
        f.write(json.dumps({"kind": "recovery", "step": 3, "reason": "test"}) + "\n")
    wait.until(lambda _: status.text.startswith(f"{count + 1} records"))

    # Sampling strategies: both cuts of the chapter's corpus 0..34.
    _tab(d, "sampling")
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, ".strategy")) == 2)
    text = d.find_element(By.ID, "sampling-out").text
    assert "state reset" in text and "state of minibatch 0, row 1" in text
    _shot(d, "sampling", tmp_path)

    # Stop a long generation: no error shown, and the server frees the slot at once.
    _tab(d, "generate")
    _type(d, "max_new_tokens", "2000")
    d.find_element(By.ID, "generate").click()
    WebDriverWait(d, 20, poll_frequency=0.02).until(
        lambda _: d.find_elements(By.CSS_SELECTOR, "#gen-panels .tok:not(.warm)"))
    d.find_element(By.ID, "stop").click()
    wait.until(lambda _: d.find_element(By.ID, "generate").is_enabled())
    assert d.find_element(By.ID, "generate-error").text == ""
    shown = len(d.find_elements(By.CSS_SELECTOR, "#gen-panels .panel:first-child "
                                                 ".tok:not(.warm)"))
    assert 0 < shown < 2000  # stopped mid-stream
    wait.until(lambda _: _queue(url)["running"] == 0)

    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    proc.send_signal(signal.SIGINT)  # Ctrl-C: the server stops cleanly
    assert proc.wait(timeout=20) == 0 and "stopped" in proc.stdout.read()
