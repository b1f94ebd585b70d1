"""The Serve app's web page (ray_ganime/web/index.html), driven in a real headless Chromium.

The browser talks to the app as deployed by conftest's ``served`` (serve_config.yaml on a real cluster, with
a bearer token): the page's own JavaScript lists the models, uploads files, calls generate and shows the
results, and the tests read back what a person would see. Chromium and chromedriver are Debian's
(``make test`` installs them); the browser tests are skipped when they are missing, and fail under CI
(tests/requires.py).
"""

from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path

import pytest
from PIL import Image
from requires import require

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PAGE = Path(__file__).resolve().parents[1] / "ray_ganime" / "web" / "index.html"
WAIT_S = 120  # the first call of a model loads its package on a Generators replica

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    require(CHROMIUM.exists() and CHROMEDRIVER.exists(),
            f"Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): `make test` installs them, or "
            f"apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # Background networking off: on a closed network Chromium otherwise keeps dialling Google's services.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit chromedriver: selenium-manager would otherwise try to download one.
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


# ---- helpers


def wait(driver, condition, message: str, timeout: float = WAIT_S):
    """``condition(driver)``'s first truthy value; on timeout, fails with what the page shows."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        shown = {i: driver.find_element("id", i).text for i in ("status", "error")}
        pytest.fail(f"timed out after {timeout} s waiting for {message}; the page shows {shown}; "
                    f"console: {console_errors(driver)}")


def by_id(driver, element_id: str):
    return driver.find_element("id", element_id)


def console_errors(driver) -> list[str]:
    """The console's errors, less the browser's own line for each non-2xx fetch (those are expected)."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def model_names(driver) -> list[str]:
    # In one script: the page replaces the options when the list (re)loads, which staleness would race.
    return driver.execute_script("return [...document.getElementById('model').options].map((o) => o.value)"
                                 ".filter(Boolean)")


def open_page(driver, served, token: str | None) -> None:
    """The page, fresh, with ``token`` in its sessionStorage as if entered before (None: no token)."""
    driver.get(served.url)
    if token is None:
        driver.execute_script("sessionStorage.clear()")
    else:
        driver.execute_script("sessionStorage.setItem('ganime-token', arguments[0])", token)
    driver.refresh()
    console_errors(driver)  # drain the log of earlier pages


def select_model(driver, served, name: str) -> None:
    from selenium.webdriver.support.ui import Select

    wait(driver, lambda d: name in model_names(d), f"model {name} in the list")
    Select(by_id(driver, "model")).select_by_value(name)


def natural_size(driver, element_id: str) -> tuple[int, int]:
    return tuple(driver.execute_script(
        "const i = document.getElementById(arguments[0]); return [i.naturalWidth, i.naturalHeight]", element_id))


def output_bytes_changed(driver, before: str | None):
    """A waiting condition: the output image's new blob URL, once it differs from ``before`` and is decoded."""
    def check(d):
        src = by_id(d, "output-image").get_attribute("src")
        return src if src and src != before and d.execute_script(
            "return document.getElementById('output-image').complete && "
            "document.getElementById('output-image').naturalWidth > 0") else None
    return check


def download(driver) -> tuple[bytes, str]:
    """The bytes behind #download's href (a blob: URL, read in the page) and its download file name."""
    link = by_id(driver, "download")
    data_url = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then((r) => r.blob()).then((blob) => {
          const reader = new FileReader();
          reader.onload = () => done(reader.result);
          reader.onerror = () => done("error: " + reader.error);
          reader.readAsDataURL(blob);
        }).catch((e) => done("error: " + e));
    """, link.get_attribute("href"))
    assert data_url.startswith("data:image/png;base64,"), data_url[:200]
    return base64.b64decode(data_url.split(",", 1)[1]), link.get_attribute("download")


def generate_and_wait(driver, message: str) -> str:
    before = by_id(driver, "output-image").get_attribute("src")
    wait(driver, lambda d: by_id(d, "generate").is_enabled(), "the Generate button to be enabled")
    by_id(driver, "generate").click()
    return wait(driver, output_bytes_changed(driver, before), message)


# ---- tests


def test_page_is_self_contained():
    """Nothing loaded from elsewhere: clusters and their users may be offline."""
    html = PAGE.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert not re.search(r"""@import|url\(\s*["']?(https?:)?//""", html, re.I)
    for element_id in ("token", "model", "file", "drop", "max-side", "seed", "n", "truncation", "generate",
                       "input-image", "output-image", "download", "status", "error"):
        assert f'id="{element_id}"' in html, element_id


def test_token_then_model_list(browser, served):
    open_page(browser, served, token=None)
    # Without the token the list cannot load: the server's 401 reason is shown, in an alert.
    error = wait(browser, lambda d: by_id(d, "error").is_displayed() and by_id(d, "error"), "the 401 message")
    assert error.get_attribute("role") == "alert"
    assert "token" in error.text and "Authorization: Bearer" in error.text, error.text
    assert model_names(browser) == []

    from selenium.webdriver.common.keys import Keys

    by_id(browser, "token").send_keys(served.token + Keys.ENTER)
    # Other tests may export more packages into the same store: the three of tests/serving.py at least.
    wait(browser, lambda d: set(served.names.values()) <= set(model_names(d)), "the three models")
    assert not by_id(browser, "error").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('ganime-token')") == served.token
    # Everything the page fetched came from the app itself.
    resources = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert resources and all(u.startswith(served.url) for u in resources), resources
    assert console_errors(browser) == []


def test_image_to_image(browser, served, tmp_path):
    open_page(browser, served, served.token)
    name = served.names["image_a"]
    select_model(browser, served, name)
    info = by_id(browser, "model-info").text
    assert "image-to-image" in info and "pix2pix" in info and "32 px" in info and "val_ssim" in info, info
    # Only the controls of an image model are shown.
    assert by_id(browser, "file").is_displayed() and by_id(browser, "max-side").is_displayed()
    assert not by_id(browser, "seed").is_displayed() and not by_id(browser, "n").is_displayed()

    path = tmp_path / "odd.png"  # 45 x 30: not a multiple of the U-Net's 32, which the server must undo
    Image.radial_gradient("L").resize((45, 30)).convert("RGB").save(path)
    by_id(browser, "file").send_keys(str(path))
    wait(browser, lambda d: natural_size(d, "input-image") == (45, 30), "the input preview")
    assert by_id(browser, "input-image").is_displayed()

    generate_and_wait(browser, "the output image")
    assert natural_size(browser, "output-image") == (45, 30)
    assert by_id(browser, "output-image").is_displayed() and by_id(browser, "input-image").is_displayed()
    assert "45×30" in by_id(browser, "status").text and " s" in by_id(browser, "status").text
    link = by_id(browser, "download")
    assert link.is_displayed() and link.get_attribute("href").startswith("blob:")
    data, filename = download(browser)
    assert filename == f"{name}-output.png"
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("PNG", (45, 30))

    # ?max_side= shrinks the input first (aspect kept): 45 x 30 -> 20 x 13.
    by_id(browser, "max-side").send_keys("20")
    generate_and_wait(browser, "the shrunk output")
    assert natural_size(browser, "output-image") == (20, 13)
    with Image.open(io.BytesIO(download(browser)[0])) as image:
        assert image.size == (20, 13)
    assert not by_id(browser, "error").is_displayed()
    assert console_errors(browser) == []


def test_drop_zone(browser, served):
    """An image dropped on #drop (a synthetic drop event carrying a File) is the input like a chosen one."""
    open_page(browser, served, served.token)
    select_model(browser, served, served.names["image_b"])
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((33, 50)).convert("RGB").save(buffer, "PNG")
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        const drop = document.getElementById("drop");
        drop.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        drop.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    """, base64.b64encode(buffer.getvalue()).decode())
    wait(browser, lambda d: natural_size(d, "input-image") == (33, 50), "the dropped image's preview")
    generate_and_wait(browser, "the output of the dropped image")
    assert natural_size(browser, "output-image") == (33, 50)
    assert by_id(browser, "download").get_attribute("download") == f"{served.names['image_b']}-output.png"
    assert console_errors(browser) == []


def test_noise_grid(browser, served):
    open_page(browser, served, served.token)
    select_model(browser, served, served.names["noise"])
    assert "dcgan" in by_id(browser, "model-info").text
    assert by_id(browser, "seed").is_displayed() and by_id(browser, "truncation").is_displayed()
    assert not by_id(browser, "file").is_displayed() and not by_id(browser, "input-image").is_displayed()

    n, size, pad = 4, 32, 2  # the server tiles n images in rows of ceil(sqrt(n)), 2 px apart and around
    for element_id, value in (("seed", "7"), ("n", str(n)), ("truncation", "0.7")):
        by_id(browser, element_id).clear()
        by_id(browser, element_id).send_keys(value)
    generate_and_wait(browser, "the noise grid")
    per_row = math.ceil(math.sqrt(n))
    grid = (per_row * (size + pad) + pad, math.ceil(n / per_row) * (size + pad) + pad)
    assert natural_size(browser, "output-image") == grid == (70, 70)
    data, filename = download(browser)
    assert filename == f"{served.names['noise']}-output.png"
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == grid
    assert console_errors(browser) == []


def test_server_error_is_shown(browser, served, tmp_path):
    open_page(browser, served, served.token)
    select_model(browser, served, served.names["image_b"])
    path = tmp_path / "notes.png"  # named like an image, so the browser sends it as image/png
    path.write_text("these are notes, not pixels\n" * 10)
    by_id(browser, "file").send_keys(str(path))
    wait(browser, lambda d: by_id(d, "generate").is_enabled(), "the Generate button")
    by_id(browser, "generate").click()
    error = wait(browser, lambda d: by_id(d, "error").is_displayed() and by_id(d, "error"), "the error message")
    assert error.text.startswith("400: ") and "not an image" in error.text, error.text
    assert not by_id(browser, "output-figure").is_displayed()
    assert by_id(browser, "generate").is_enabled()  # one can try again with another file
