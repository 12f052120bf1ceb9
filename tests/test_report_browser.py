"""The audit's HTML report in a real headless browser (Chromium): the filter (whole words, one column with
``status:ok``, from the address and from the status counts) and the sort run, the details follow the filter, the
table's layout holds from 700 to 2000 px with very long paths and producer strings (every shown column has a
width, the path and the status are not cut), axis labels are at least 11 px, and it renders pixels.

Skipped with the reason when Chromium is not installed (``apt-get install chromium``; ``.ci/run`` installs it)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from builders import random_mlp, write_mlps

from onnx_pathlift.audit import Settings, audit
from onnx_pathlift.audit.report import write_html

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and os.path.isfile(p)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (/usr/bin/chromium): apt-get install chromium")

LONG_PRODUCER = "an exporter with a very long name " * 12


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with a private profile and no network services; return its stdout."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--allow-file-access-from-files",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report of 8 files: ok models (one with a 400-character producer, one with a 150-character
    name in a deep folder, one named ok_not), an unsupported one named book and an invalid one."""
    root = tmp_path_factory.mktemp("report")
    models = write_mlps(root / "m", ["a", "b", "c", "ok_not"], unsupported=0, invalid=1)
    (models / "book.onnx").write_bytes(random_mlp(100, "Tanh").SerializeToString())  # unsupported; 'ok' in its name
    long = random_mlp(7)
    long.producer_name = LONG_PRODUCER
    (models / "long_producer.onnx").write_bytes(long.SerializeToString())
    deep = models / "a folder" / "deeper still" / "and deeper"
    deep.mkdir(parents=True)
    (deep / ("x" * 150 + ".onnx")).write_bytes(random_mlp(8).SerializeToString())
    result = audit([models], Settings(), db=root / "a.sqlite", jobs=2)
    assert len(result.results) == 8 and {r.status for r in result.results} == {"ok", "unsupported", "invalid"}
    page = root / "report.html"
    write_html(page, result, Settings())
    return page


def test_page_is_self_contained_with_every_view(report):
    page = report.read_text()
    assert not re.search(r"https?://|\bsrc=|<link", page)
    for title in ("log10 L1 path-norm", "log10 L2 path-norm", "log10 L4 path-norm", "log10 Lipschitz bound"):
        assert f"<figcaption>{title}" in page
    assert 'aria-label="log10 path-norm against log10 parameters"' in page and page.count("<circle") >= 6 + 2
    assert str(report.parent) + "/m" in page  # the base folder, once ...
    assert page.count(str(report.parent)) == 1  # ... and every path relative to it
    assert ">a folder/<wbr>deeper still/<wbr>and deeper/<wbr>" + "x" * 150 + ".onnx</a>" in page


def test_filter_runs_in_the_browser(report, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", report.as_uri() + "#filter=tanh")
    body = dom[dom.index('id="models"'):]
    body = body[: body.index("</table>")]
    rows = re.findall(r"<tr data-i=\"\d+\"( hidden=\"\")?>", body)
    assert len(rows) == 8 and sum(bool(h) for h in rows) == 7  # 8 models, 7 of them hidden
    assert "1 of 8 models shown" in dom
    dom = chromium(tmp_path, "--dump-dom", report.as_uri() + "#filter=ok%20long_producer")
    assert "1 of 8 models shown" in dom
    dom = chromium(tmp_path, "--dump-dom", report.as_uri() + "#filter=status%3Aunsupported")
    assert "1 of 8 models shown" in dom


def probe(report: Path, tmp_path: Path, width: int, body: str):
    """Load the report in a ``width`` px wide frame, run the JavaScript function ``body`` of ``d`` (the report's
    document) once it is loaded, and return what it returns (through JSON)."""
    wrapper = tmp_path / "wrapper.html"
    wrapper.write_text(f"""<!DOCTYPE html><html><body style="margin:0">
<iframe id="f" src="{report.as_uri()}" style="width:{width}px;height:900px;border:0"></iframe><pre id="out">pending</pre>
<script>window.addEventListener('load', function () {{
  var d = document.getElementById('f').contentDocument, out = document.getElementById('out');
  try {{ out.textContent = JSON.stringify((function (d) {{ {body} }})(d)); }}
  catch (e) {{ out.textContent = JSON.stringify({{error: String(e)}}); }}
}});</script></body></html>""")
    dom = chromium(tmp_path, "--dump-dom", wrapper.as_uri())
    got = json.loads(html.unescape(re.search(r'<pre id="out">([^<]*)</pre>', dom).group(1)))
    assert not (isinstance(got, dict) and "error" in got), got
    return got


#: JavaScript: type WORDS in the filter box; then the shown rows' paths, the shown details and the counter
FILTER = """function filter(words) {
  var box = d.getElementById('filter'); box.value = words; box.dispatchEvent(new Event('input'));
  return state();
}
function state() {
  var rows = Array.from(d.getElementById('models').tBodies[0].rows).filter(function (r) { return !r.hidden; });
  var details = Array.from(d.querySelectorAll('details')).filter(function (e) { return !e.hidden; });
  return {paths: rows.map(function (r) { return r.cells[1].title; }), rows: rows.map(function (r) { return r.dataset.i; }),
          details: details.map(function (e) { return e.id.slice(1); }), shown: d.getElementById('shown').textContent};
}
"""


def test_filter_whole_words_columns_counts_and_details(report, tmp_path):
    got = probe(report, tmp_path, 1400, FILTER + """
  var r = {ok: filter('ok'), status: filter('status:ok'), unsupported: filter('STATUS:unsupported'),
           path_ok: filter('path:ok'), book: filter('book'), two: filter('status:ok ok_not'), bad: filter('nosuch:x'),
           tanh: filter('reason:tanh'), none: filter('')};
  filter('');
  d.querySelector('.counts a.invalid').click();
  r.clicked = state(); r.box = d.getElementById('filter').value;
  return r;""")
    oks = {"a.onnx", "b.onnx", "c.onnx", "ok_not.onnx", "long_producer.onnx",
           "a folder/deeper still/and deeper/" + "x" * 150 + ".onnx"}
    assert set(got["status"]["paths"]) == oks and got["status"]["shown"] == "6 of 8 models shown"
    assert set(got["ok"]["paths"]) == oks  # whole words: 'ok' matches no part of book
    assert got["unsupported"]["paths"] == ["book.onnx"] and got["book"]["paths"] == ["book.onnx"]
    assert got["path_ok"]["paths"] == ["ok_not.onnx"]  # the one path with the word ok
    assert got["two"]["paths"] == ["ok_not.onnx"]  # every word must match
    assert got["tanh"]["paths"] == ["book.onnx"]
    assert got["bad"]["paths"] == [] and "no column named nosuch" in got["bad"]["shown"] and "status" in got["bad"]["shown"]
    assert len(got["none"]["paths"]) == 8
    for case in got.values():
        if isinstance(case, dict):
            assert case["details"] == case["rows"]  # the details section follows the filter
    assert got["box"] == "status:invalid" and got["clicked"]["paths"] == ["garbage_0.onnx"]


def test_sort_by_clicking_a_header(report, tmp_path):
    got = probe(report, tmp_path, 1400, """
  var th = d.querySelector('th[data-key=l1]'), rows = function () {
    return Array.from(d.getElementById('models').tBodies[0].rows).map(function (r) { return r.cells[5].dataset.v; });
  };
  th.click(); var up = rows(); th.click(); return {up: up, down: rows()};""")
    values = [float(v) for v in got["up"] if v]
    assert len(values) == 6 and values == sorted(values) and got["up"][6:] == ["", ""]  # no value last
    assert [float(v) for v in got["down"] if v] == sorted(values, reverse=True)


@pytest.mark.parametrize("width", [700, 1000, 1400, 2000])
def test_layout_holds_at_common_widths(report, tmp_path, width):
    """Measured in the browser: no horizontal page overflow, every shown column has a width (the path at least
    180 px), the path and the status are never cut, only the very long path grows its row, and every chart label
    is drawn at 11 px or more."""
    got = probe(report, tmp_path, width, """
  var table = d.getElementById('models'), rows = Array.from(table.tBodies[0].rows);
  var shown = Array.from(table.tHead.rows[0].cells).filter(function (th) { return getComputedStyle(th).display !== 'none'; });
  var cut = function (c) { return c.scrollWidth > c.clientWidth; };
  return {page: d.documentElement.scrollWidth, view: d.documentElement.clientWidth, table: table.getBoundingClientRect().width,
    columns: shown.map(function (th) { return [th.dataset.key, th.getBoundingClientRect().width]; }),
    cut: rows.filter(function (r) { return cut(r.cells[1]) || cut(r.cells[2]); }).map(function (r) { return r.cells[1].title; }),
    rows: rows.map(function (r) { return [r.cells[1].title.length, r.getBoundingClientRect().height]; }),
    labels: Array.from(d.querySelectorAll('svg text')).map(function (t) {
      var m = t.getScreenCTM(); return parseFloat(getComputedStyle(t).fontSize) * Math.hypot(m.a, m.b); })};""")
    assert got["page"] <= got["view"], got  # nothing sticks out of the window
    assert got["table"] <= got["view"], got
    columns = dict(got["columns"])
    assert {"path", "status", "reason", "l1"} <= set(columns) and min(columns.values()) >= 20, columns
    assert columns["path"] >= 180, columns
    if width >= 1400:
        assert {"l2", "l4", "lipschitz", "producer", "opset", "wall"} <= set(columns), columns
    assert got["cut"] == [], got  # paths wrap, statuses fit
    assert all(h < 40 for n, h in got["rows"] if n < 40), got  # long producers do not grow their rows
    assert got["labels"] and min(got["labels"]) >= 11, sorted(got["labels"])[:5]


def test_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,900", report.as_uri())
    width, height, pixels = read_png(shot.read_bytes())
    assert (width, height) == (1400, 900)
    non_white = sum(b != 255 for b in pixels) / len(pixels)
    assert non_white > 0.01, non_white  # text, bars and dots, not an empty page


def read_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the decompressed (filtered) pixel rows of a PNG file."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return size[0], size[1], zlib.decompress(idat)
