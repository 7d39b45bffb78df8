"""Drive the /ui page in headless chromium: the browser tests' helpers and ``make
ui-screenshot``, which captures the page classifying a few images into docs/images/ui.png.

Playwright drives the system's chromium (``--chromium``, default: the first ``chromium`` on
PATH); it never downloads a browser. Usage, with a server running (``make serve``)::

    python -m devtools.ui_screenshot --url http://127.0.0.1:3000 --out docs/images/ui.png \\
        data/demo/single_label          # a folder: its first image of each class
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
RESULTS_TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1100, "height": 760}


def launch_chromium(playwright: Playwright, *, executable: str) -> Browser:
    """Headless chromium from ``executable`` (Debian's package), never a downloaded one."""
    return playwright.chromium.launch(executable_path=executable, headless=True)


def open_ui(page: Page, *, url: str, key: str = "") -> None:
    """Open the page, enter ``key`` (if any) and wait until the lineage says something."""
    page.goto(f"{url}/ui/")
    if key:
        page.fill("#api-key", key)
        page.dispatch_event("#api-key", "change")
    page.wait_for_function(
        "() => !document.getElementById('lineage-fields').hidden"
        " || document.getElementById('lineage-status').textContent.includes('unavailable')"
    )


def classify_files(page: Page, files: Sequence[Path | dict]) -> None:
    """Choose ``files`` (paths, or Playwright file payloads) and wait for every result card."""
    page.set_input_files("#files", list(files))
    page.wait_for_function(
        "(n) => document.querySelectorAll('#results .result.done').length === n",
        arg=len(files),
        timeout=RESULTS_TIMEOUT_MS,
    )


def shown_labels(page: Page) -> dict[str, list[tuple[str, float]]]:
    """Per file name, the (label, score) pairs the page shows, best first."""
    return page.eval_on_selector_all(
        "#results .result",
        """cards => Object.fromEntries(cards.map(card => [card.dataset.file,
            [...card.querySelectorAll('.labels li')].map(li =>
                [li.dataset.label, Number(li.dataset.score)])]))""",
    )


def shown_errors(page: Page) -> dict[str, str]:
    """Per file name, the error text the page shows (files that failed only)."""
    return page.eval_on_selector_all(
        "#results .result.failed",
        "cards => Object.fromEntries(cards.map(c => [c.dataset.file,"
        " c.querySelector('.error').innerText]))",
    )


def image_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a folder gives the first image of each of its sub-folders (one per class)."""
    chosen: list[Path] = []
    for path in paths:
        if path.is_file():
            chosen.append(path)
            continue
        for folder in sorted(p for p in path.iterdir() if p.is_dir()):
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            chosen += images[:1]
    if not chosen:
        raise ValueError(f"no images in {', '.join(map(str, paths))}")
    return chosen


def screenshot(
    browser: Browser, *, url: str, images: Sequence[Path], out: Path, key: str = ""
) -> Path:
    """Classify ``images`` on the page at ``url`` and save a screenshot of it to ``out``."""
    page = browser.new_page(viewport=VIEWPORT)
    try:
        open_ui(page, url=url, key=key)
        classify_files(page, images)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
    finally:
        page.close()
    logger.info("saved %s (%d images classified at %s)", out, len(images), url)
    return out


def capture(*, url: str, images: Sequence[Path], out: Path, key: str, chromium: str) -> Path:
    """:func:`screenshot` in a chromium of its own."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, executable=chromium)
        try:
            return screenshot(browser, url=url, images=images, out=out, key=key)
        finally:
            browser.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files, or folders of classes")
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    parser.add_argument("--out", type=Path, default=Path("docs/images/ui.png"), help="PNG path")
    parser.add_argument("--key", default="", help="an API key, if the server has keys on")
    parser.add_argument("--chromium", default=shutil.which("chromium"), help="chromium binary")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.chromium:
        parser.error("chromium not found: apt-get install chromium, or pass --chromium")
    capture(
        url=args.url.rstrip("/"),
        images=image_files(args.images),
        out=args.out,
        key=args.key,
        chromium=args.chromium,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
