"""End to end in a real browser: ``seqlm train`` an English and a Chinese tiny run, ``seqlm
serve`` them, and drive every tab of the page with headless Chromium (Debian's chromium +
chromium-driver), on a desktop window and on a 390 × 844 phone screen, in both UI languages.

Skips only when Selenium or Chromium is not installed. ``SEQLM_SCREENSHOTS=DIR`` keeps
screenshots there (docs/img/playground-*.png come from this test); ``SEQLM_PLAYGROUND_RUN``
and ``SEQLM_PLAYGROUND_RUN_ZH`` serve (copies of) those runs instead of training tiny ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

import seqlm
from conftest import TINY_TEXT, TINY_TEXT_ZH

webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("fastapi")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                "--lang=en-US")
TINY_TRAIN = ["--hidden-size", "24", "--embedding-dim", "8", "--batch-size", "8",
              "--num-steps", "16", "--max-steps", "30", "--eval-every", "15", "--log-every", "5",
              "--sample-tokens", "20", "--split", "0.8,0.2,0", "--threads", "1"]  # a few s each
TINY_TRAIN_EN = ["--cell", "gru", *TINY_TRAIN]
TINY_TRAIN_ZH = ["--cell", "lstm", *TINY_TRAIN]  # an LSTM: the c view too
EN, ZH = "english", "chinese"  # the runs' names on the page
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
TABS = ("generate", "score", "state", "time", "training", "sampling")
# Non-white pixels of a canvas, counted in the page.
INK = """const c = document.getElementById(arguments[0]);
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 240 || d[i+1] < 240 || d[i+2] < 240) n++;
return n;"""
OVERFLOW = "return document.documentElement.scrollWidth - window.innerWidth;"
CJK = re.compile(r"[\u4e00-\u9fff]")
# Where a screenshot of a tab starts: the page's top, the output for the views below inputs.
SCROLL_TO = """const at = {state: 'state-note', time: 'time-chart', generate: 'prefix'}[arguments[0]];
if (at && window.innerWidth < 700) document.getElementById(at).scrollIntoView();
else if (arguments[0] === 'state') document.getElementById('state-note').scrollIntoView();
else window.scrollTo(0, 0);"""


def _chromium() -> tuple[str, str]:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
    if not browser or not driver:
        pytest.skip("no Chromium here: install Debian's chromium, chromium-driver and "
                    "fonts-noto-cjk (apt-get install ...; .ci/run does it)")
    fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True) \
        if shutil.which("fc-list") else None
    if fonts is not None and not fonts.stdout.strip():
        pytest.skip("no CJK font here: the Chinese pages would show boxes; install "
                    "fonts-noto-cjk (.ci/run does it)")
    return browser, driver


def _train(root: Path, name: str, text: str, flags: list[str], given: str | None) -> Path:
    if given:  # a copy: the test appends to its metrics.jsonl
        return Path(shutil.copytree(given, root / name))
    from seqlm.cli import main

    (root / f"{name}.txt").write_text(text, encoding="utf-8")
    assert main(["train", "--corpus", str(root / f"{name}.txt"), "--out", str(root / name),
                 *flags, "--json"]) == 0
    return root / name


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("playground")
    return (_train(root, EN, TINY_TEXT, TINY_TRAIN_EN, os.environ.get("SEQLM_PLAYGROUND_RUN")),
            _train(root, ZH, TINY_TEXT_ZH, TINY_TRAIN_ZH,
                   os.environ.get("SEQLM_PLAYGROUND_RUN_ZH")))


@pytest.fixture(scope="module")
def server(run_dirs):
    """``seqlm serve EN EN/checkpoints/last ZH --port 0`` in a subprocess; yields its URL."""
    en, zh = run_dirs
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "seqlm", "serve", str(en),
                             str(en / "checkpoints" / "last"), str(zh), "--port", "0",
                             "--max-gradient-steps", "60"], env=env,
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
    options.add_experimental_option("prefs", {"intl.accept_languages": "en-US,en"})
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


def _no_console_error(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def _hover_heatmap_cell(driver, col: int, row: int) -> str:
    """Move the pointer over one cell of the h heatmap; return the tooltip's text."""
    driver.execute_script("document.getElementById('heatmap').parentElement"
                          ".scrollIntoView({block: 'start'})")
    g = json.loads(driver.find_element(By.ID, "heatmap").get_attribute("data-geometry"))
    box = driver.execute_script("const b = document.getElementById('heatmap')"
                                ".getBoundingClientRect(); return [b.left, b.top];")
    x = box[0] + g["left"] + (col + 0.5) * g["cellW"]
    y = box[1] + g["top"] + (row + 0.5) * g["cellH"]
    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(x), int(y))
    actions.perform()
    tip = driver.find_element(By.ID, "tooltip")
    WebDriverWait(driver, 10).until(lambda _: tip.is_displayed())
    return tip.text


def test_every_tab_in_a_real_browser(server, browser, run_dirs, tmp_path):
    proc, url = server
    d = browser
    d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    wait = WebDriverWait(d, 60)
    d.get(f"{url}?lang=en")
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#run option")) == 3)
    wait.until(lambda _: d.find_element(By.ID, "prefix").get_attribute("value"))

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
    assert "run_b=" in d.current_url and "max_new_tokens=60" in d.current_url  # kept in the URL
    _shot(d, "generate", tmp_path)

    # Score a text: surprisal colouring, perplexity, an unknown token marked.
    _tab(d, "score")
    assert "tab=score" in d.current_url
    text = ("the time traveller (for so it will be convenient to speak of him) was "
            "expounding a recondite matter to us. his grey eyes shone жз and twinkled")
    known = seqlm.load(run_dirs[0]).tokenizer.vocab.token_to_idx
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

    # Inside the state: the scored text's heatmap, tokens along time, a value under the
    # pointer, rows sorted by a ranking; clicking a row or a ranked unit picks that unit.
    d.find_element(By.ID, "score-inspect").click()
    wait.until(lambda _: "text coloured by" in d.find_element(By.ID, "unit-label").text)
    assert d.execute_script(INK, "heatmap") > 100
    tip_text = _hover_heatmap_cell(d, 4, 2)
    assert f'token 4 "{text[4]}"' in tip_text, tip_text
    before = d.find_element(By.ID, "unit-label").text
    for row in (5, 15):  # two rows far apart: at least one differs from the first pick
        _hover_heatmap_cell(d, 3, row)
        ActionChains(d).click().perform()
        if d.find_element(By.ID, "unit-label").text != before:
            break
    assert d.find_element(By.ID, "unit-label").text != before
    d.find_element(By.CSS_SELECTOR, '#state-sort option[value="inside brackets"]').click()
    assert "state-sort=inside+brackets" in d.current_url
    ranked = d.find_element(By.CSS_SELECTOR, "#rankings > div:nth-child(3) li")
    layer_unit = ranked.text.split(" · ")[0]  # e.g. "L0 u19"
    ranked.click()
    label = d.find_element(By.ID, "unit-label").text
    assert f"layer {layer_unit[1:].split()[0]}, unit {layer_unit.split('u')[-1]}" in label
    d.find_element(By.CSS_SELECTOR, '#state-scale option[value="unit"]').click()
    d.execute_script("const r = document.getElementById('state-threshold'); r.value = 0.9;"
                     "r.dispatchEvent(new Event('input'));")
    assert d.find_elements(By.CSS_SELECTOR, "#state-tokens .tok.fires")
    d.find_element(By.CSS_SELECTOR, '#state-scale option[value="global"]').click()
    d.execute_script("document.getElementById('state-note').scrollIntoView()")
    _hover_heatmap_cell(d, 6, 3)
    _shot(d, "state", tmp_path)
    d.execute_script("window.scrollTo(0, 0)")

    # Through time: the per-lag gradient norms on a log scale, a labelled tick per decade.
    _tab(d, "time")
    d.find_element(By.ID, "gradients").click()
    wait.until(lambda _: "k=0" in d.find_element(By.ID, "time-note").text)
    assert d.execute_script(INK, "time-chart") > 100
    ticks = json.loads(d.find_element(By.ID, "time-chart").get_attribute("data-y-ticks"))
    decades = [v for v in ticks if re.fullmatch(r"(1e[-+]\d+|0\.0*1|10*|10*k|10*M)", v)]
    assert len(decades) >= 2, ticks
    _shot(d, "time", tmp_path)

    # Training: curves with the baselines, and samples, refreshed while the metrics grow.
    _tab(d, "training")
    status = d.find_element(By.ID, "train-status")
    wait.until(lambda _: "records" in status.text)
    count = int(status.text.split()[0])
    assert d.execute_script(INK, "chart-ppl") > 100 and "step" in d.find_element(
        By.ID, "samples").text
    _shot(d, "training", tmp_path)
    with open(run_dirs[0] / "metrics.jsonl", "a", encoding="utf-8") as f:  # training goes on
        f.write(json.dumps({"kind": "recovery", "step": 3, "reason": "test"}) + "\n")
    wait.until(lambda _: status.text.startswith(f"{count + 1} records"))

    # Sampling strategies: both cuts of the chapter's corpus 0..34.
    _tab(d, "sampling")
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, ".strategy")) == 2)
    text = d.find_element(By.ID, "sampling-out").text
    assert "state reset" in text and "state of minibatch 0, row 1" in text
    _shot(d, "sampling", tmp_path)

    # A reload keeps the tab and the inputs.
    d.refresh()
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, ".strategy")) == 2)
    assert d.find_element(By.ID, "max_new_tokens").get_attribute("value") == "60"

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
    _no_console_error(d)


def _visit(d, url: str, run: str, lang: str, tab: str):
    d.get(f"{url}?lang={lang}&run={run}&tab={tab}")
    wait = WebDriverWait(d, 60)
    wait.until(lambda _: d.find_element(By.ID, "card-title").text == run)
    return wait


def _exercise(d, wait, tab: str) -> None:
    """The tab's main action, then its output."""
    if tab == "generate":
        _type(d, "max_new_tokens", "30")
        d.find_element(By.ID, "generate").click()
        wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR,
                                                 "#gen-panels .tok:not(.warm)")) == 30
                   and d.find_element(By.ID, "generate").is_enabled())
    elif tab == "score":
        d.find_element(By.ID, "score").click()
        wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#score-tokens .tok"))
    elif tab == "state":
        d.find_element(By.ID, "states").click()
        wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#state-tokens .tok")
                   and d.find_element(By.ID, "unit-label").text)
    elif tab == "time":
        d.find_element(By.ID, "gradients").click()
        wait.until(lambda _: "k=0" in d.find_element(By.ID, "time-note").text)
    elif tab == "training":
        wait.until(lambda _: d.find_element(By.ID, "train-status").text)
    else:
        wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, ".strategy")) == 2)


# Every (UI language, run) pair on the phone, where a long label or a text in the other
# script overflows first; on the desktop each run in its own language (and the Chinese
# screenshots): six pages of every tab instead of eight.
SCREEN_PAIRS = {"desktop": [("zh", ZH), ("en", EN)],
                "phone": [("zh", ZH), ("en", ZH), ("zh", EN), ("en", EN)]}


@pytest.mark.parametrize("screen", ["desktop", "phone"])
def test_each_run_in_each_language_fits_the_screen(server, browser, screen, tmp_path):
    """Every tab of the English and the Chinese run, in English and in Chinese: its own
    texts, no horizontal overflow, no console error; the state view's hover names a token."""
    _, url = server
    d = browser
    if screen == "phone":
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    else:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    try:
        for lang, run in SCREEN_PAIRS[screen]:
            for tab in TABS:
                wait = _visit(d, url, run, lang, tab)
                label = d.find_element(By.CSS_SELECTOR, f'#tabs button[data-tab="{tab}"]')
                assert bool(CJK.search(label.text)) == (lang == "zh"), label.text
                text = d.find_element(By.ID, "state-text").get_attribute("value")
                assert bool(CJK.search(text)) == (run == ZH), text  # its own text
                _exercise(d, wait, tab)
                assert d.execute_script(OVERFLOW) <= 0, (screen, lang, run, tab)
                if tab == "state":
                    tip = _hover_heatmap_cell(d, 2, 1)
                    token = json.dumps(
                        d.execute_script("return document.querySelectorAll("
                                         "'#state-tokens .tok')[2].textContent"),
                        ensure_ascii=False)
                    assert token in tip, (tip, token)
                    if run == ZH:  # an LSTM: c beside h
                        assert d.find_element(By.ID, "cellmap").is_displayed()
                if lang == "zh" and run == ZH:
                    d.execute_script(SCROLL_TO, tab)
                    _shot(d, f"{'zh' if screen == 'desktop' else 'phone'}-{tab}", tmp_path)
            _no_console_error(d)
    finally:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_ctrl_c_stops_the_server(server):
    proc, _ = server
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the server stops cleanly
    assert proc.wait(timeout=20) == 0 and "stopped" in proc.stdout.read()
