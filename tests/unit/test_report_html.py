"""A suite's ``report.html``: self-contained (no request leaves the file), renders in headless Chromium without a
console or script error, and its results table holds exactly the cells of ``results.csv``."""
import csv
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from dtr_plugins.experiments.report import build_report
from dtr_plugins.experiments.report_html import markdown_to_html
from dtr_plugins.experiments.svg_charts import Chart, render_chart

from .test_compare import crafted_suite

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Put into a copy of the page: records script errors and images that failed to load into the DOM.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(e.message || ("failed to load " + ((e.target && (e.target.src || e.target.href)) || "?")));
}, true);
window.addEventListener("load", function () {
  var broken = Array.prototype.filter.call(document.images, function (i) { return !i.complete || !i.naturalWidth; });
  broken.forEach(function (i) { window.__errors.push("broken image " + i.alt); });
  document.body.setAttribute("data-probe-errors", JSON.stringify(window.__errors));
  document.body.setAttribute("data-probe-images", String(document.images.length));
});
</script>"""


class Tables(HTMLParser):
    """The cells of the table ``id="results-csv"``, row by row, and every ``src``/``href``/``url(`` target."""

    def __init__(self):
        super().__init__()
        self.rows, self.targets, self.body = [], [], {}
        self._in, self._cell = False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        if tag == "table" and attrs.get("id") == "results-csv":
            self._in = True
        elif self._in and tag == "tr":
            self.rows.append([])
        elif self._in and tag in ("td", "th"):
            self._cell = ""
        for key in ("src", "href"):
            if attrs.get(key):
                self.targets.append(attrs[key])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in = False
        elif self._in and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def suite_with_samples(root):
    root = crafted_suite(root, seeds=range(2), extra=False)
    rd = root / "dtr-a4-b0.8__constant__seed0"
    (rd / "samples").mkdir()
    rng = np.random.default_rng(0)
    np.savez(rd / "samples" / "samples.npz", arr_0=rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
             labels=np.arange(8) % 4)
    return root


def test_report_html_is_self_contained_and_has_every_plot(tmp_path):
    root = suite_with_samples(tmp_path / "s")
    build_report(root)
    page = (root / "report.html").read_text()
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "@import" not in page and "url(" not in page
    parser = Tables()
    parser.feed(page)
    assert all(t.startswith("data:image/png;base64,") or not re.match(r"^[a-z]+:", t) for t in parser.targets)
    markdown = (root / "report.md").read_text()
    pngs = re.findall(r"!\[([^\]]+)\]\(plots/", markdown)
    assert {"samples", "paired_differences", "heldout_loss_bands", "train_loss"} <= set(pngs)
    for stem in ("samples", "paired_differences", "loss_per_timestep_bucket"):  # pictures: embedded PNGs
        assert f'alt="{stem}" src="data:image/png;base64,' in page
    # curves with many points: inline SVG, each point's value in a <title> (shown on hover)
    assert "<figcaption>held-out loss, band 9</figcaption>" in page and "<figcaption>training loss</figcaption>" in page
    assert "<title>dtr-a4-b0.8, constant: step 400, held-out loss 0.6</title>" in page
    assert 'alt="heldout_loss_bands"' not in page  # drawn as SVG instead


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (as root: apt-get install chromium)")
def test_report_html_renders_in_chromium_and_its_table_equals_results_csv(tmp_path):
    root = suite_with_samples(tmp_path / "s")
    build_report(root)
    probed = tmp_path / "probed.html"
    probed.write_text((root / "report.html").read_text().replace("<head>", "<head>" + PROBE, 1))
    done = subprocess.run([CHROMIUM, "--headless=new", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    parser = Tables()
    parser.feed(done.stdout)
    assert parser.body.get("data-probe-errors") == "[]", parser.body
    assert int(parser.body["data-probe-images"]) >= 3
    with open(root / "results.csv", newline="") as f:
        expected = list(csv.reader(f))
    assert len(expected) > 10 and parser.rows == expected


def test_markdown_conversion_and_chart_hover():
    html = markdown_to_html("# Suite `a<b`\n\n| x | y |\n|---|---|\n| **1** | *2* |\n\n- one `**x**`\n\n"
                            "> **note** here\n\n![p](plots/p.png)\nsee [f](results.csv)")
    assert "<h1>Suite <code>a&lt;b</code></h1>" in html
    assert "<td><strong>1</strong></td><td><em>2</em></td>" in html
    assert "<li>one <code>**x**</code></li>" in html and "<blockquote><p><strong>note</strong> here</p>" in html
    assert "<p>p</p>" in html and '<a href="results.csv">f</a>' in html  # an image not given: its alt text
    svg = render_chart(Chart("loss", {"a<b": [(10, 0.5), (20, 0.25)]}, y_label="loss", log_y=True))
    assert svg.count("<circle") == 2 and "<title>a&lt;b: step 20, loss 0.25</title>" in svg
    assert "no values to draw" in render_chart(Chart("empty", {"a": [(1, 0.0)]}, log_y=True))
