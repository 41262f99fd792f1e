"""The report in a real browser: headless Chromium (Debian's package) opens a tiny study's report.html from the file
and the page is checked as a reader gets it: every image decodes, the console stays clean, nothing is fetched from
the network, nothing but table boxes scrolls sideways at 1280 px, the summary table fits its box even with the demo's
longest names and flags (no column hidden behind a scroll bar), and figures are never shrunk (so their >= 9 pt text
stays >= 9 pt at 100 % zoom). A full-page screenshot is saved (to $XFERLAB_SCREENSHOT_DIR too, when set).

Run by `make test` when Chromium is installed; .ci/run installs it, so CI always runs it."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
from chromium import Browser, find_chromium

from xferlab import artifacts
from xferlab.report import build_outputs

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 1280, 900
VERDICT = {"level": "problem", "headline": "Do not read the test accuracy as held-out performance: the test split is "
           "not a random sample of the training distribution.",
           "findings": [{"topic": "shift", "level": "problem", "text": "Image shift: the test images differ."}]}

PAGE_FACTS = """(() => {
  const width = document.documentElement.clientWidth;
  const overflow = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (el.closest('.scroll')) continue;  // tables scroll inside their own boxes
    const r = el.getBoundingClientRect();
    if (r.right > width + 0.5) overflow.push(`${el.tagName}.${el.className} right=${Math.round(r.right)}`);
  }
  const images = [...document.images].map(i => ({alt: i.alt, complete: i.complete, natural: i.naturalWidth,
                                                 shown: i.getBoundingClientRect().width}));
  return {width, scrollWidth: document.documentElement.scrollWidth, overflow: overflow.slice(0, 10), images,
          banner: (document.querySelector('.verdict-banner') || {}).textContent || null,
          firstSection: document.querySelector('section').id};
})()"""

# The summary table with the longest names a study shows (the demo's backbone; a flag and a diverged count): its box's
# scroll width and width. Evaluated after the page's facts, since it rewrites the table's cells.
SUMMARY_WIDTH = """(() => {
  const box = document.querySelector('#summary .scroll');
  for (const row of box.querySelectorAll('tbody tr')) {
    row.cells[1].textContent = 'efficientnet_lite2';
    row.cells[row.cells.length - 1].innerHTML = '<span class="flag">degenerate; 1 of 2 runs diverged</span>';
  }
  return [box.scrollWidth, box.clientWidth];
})()"""


def _audit_section(audit_dir) -> str:
    """A stand-in audit section with a real (decodable) PNG, as the audit's own renderer embeds its figures."""
    import matplotlib.pyplot as plt

    from xferlab.report.figures import figure_uri

    fig, ax = plt.subplots(figsize=(4, 2), dpi=100)
    ax.plot([0, 1], [0, 1])
    return (f'<section id="audit"><h2>Split audit</h2><p>{VERDICT["headline"]}</p>'
            f'<img alt="audit figure" src="{figure_uri(fig)}"></section>')


@pytest.fixture
def report_with_audit(study_dir, tmp_path, monkeypatch):
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy)
    (copy / artifacts.AUDIT / artifacts.AUDIT_JSON).write_text(json.dumps({"verdict": VERDICT}))
    module = types.ModuleType("xferlab.report.audit")
    module.render_audit_section = _audit_section
    monkeypatch.setitem(sys.modules, "xferlab.report.audit", module)
    return build_outputs(copy)[1]


def test_the_report_in_headless_chromium(report_with_audit, tmp_path):
    executable = find_chromium()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
    browser = Browser(executable, tmp_path / "profile")
    try:
        session = browser.open(report_with_audit.resolve().as_uri(), WIDTH, HEIGHT)
        facts = browser.evaluate(PAGE_FACTS, session)
        shot = browser.screenshot(session, tmp_path / "report.png")
        summary_scroll, summary_width = browser.evaluate(SUMMARY_WIDTH, session)
    finally:
        browser.close()
    if os.environ.get("XFERLAB_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["XFERLAB_SCREENSHOT_DIR"]) / "report.png")
    assert shot.stat().st_size > 10_000

    events = browser.events
    errors = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == []
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []  # nothing from the network

    images = facts["images"]
    assert len(images) >= 13 and all(i["complete"] and i["natural"] > 0 for i in images), images
    shrunk = [i["alt"] for i in images if i["shown"] < 0.99 * i["natural"]]
    assert shrunk == []  # a figure shown smaller than drawn would shrink its text below 9 pt
    assert facts["scrollWidth"] <= facts["width"] == WIDTH and facts["overflow"] == []
    assert summary_scroll <= summary_width  # every column of the summary in view at 1280 px
    assert facts["firstSection"] == "summary" and facts["banner"].startswith("Split audit verdict PROBLEM")
