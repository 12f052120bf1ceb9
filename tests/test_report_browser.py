"""The audit's HTML report in a real headless browser (Chromium): the filter script runs, the table's
layout holds from 1000 to 1600 px with very long paths and producer strings, and it renders pixels.

Skipped with the reason when Chromium is not installed (``apt-get install chromium``)."""

from __future__ import annotations

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
    name in a deep folder), an unsupported one and an invalid one."""
    root = tmp_path_factory.mktemp("report")
    models = write_mlps(root / "m", ["a", "b", "c", "d"], unsupported=1, invalid=1)
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
    assert ">a folder/deeper still/and deeper/" + "x" * 150 + ".onnx</a>" in page


def test_filter_runs_in_the_browser(report, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", report.as_uri() + "#filter=tanh")
    body = dom[dom.index('id="models"'):]
    body = body[: body.index("</table>")]
    rows = re.findall(r"<tr( hidden=\"\")?>", body)
    assert len(rows) == 1 + 8 and sum(bool(h) for h in rows) == 7  # the header, 8 models, 7 of them hidden
    assert "1 of 8 models shown" in dom
    dom = chromium(tmp_path, "--dump-dom", report.as_uri() + "#filter=ok%20long_producer")
    assert "1 of 8 models shown" in dom


@pytest.mark.parametrize("width", [1000, 1400, 1600])
def test_layout_holds_at_common_widths(report, tmp_path, width):
    """Measured in the browser: no horizontal page overflow, every table row one line high."""
    wrapper = tmp_path / "wrapper.html"
    wrapper.write_text(f"""<!DOCTYPE html><html><body style="margin:0">
<iframe id="f" src="{report.as_uri()}" style="width:{width}px;height:900px;border:0"></iframe><pre id="out">pending</pre>
<script>window.addEventListener('load', function () {{
  var d = document.getElementById('f').contentDocument, table = d.getElementById('models');
  var heights = Array.from(table.tBodies[0].rows).map(function (r) {{ return r.getBoundingClientRect().height; }});
  document.getElementById('out').textContent = JSON.stringify({{page: d.documentElement.scrollWidth,
    view: d.documentElement.clientWidth, table: table.getBoundingClientRect().width, rows: heights}});
}});</script></body></html>""")
    dom = chromium(tmp_path, "--dump-dom", wrapper.as_uri())
    got = json.loads(re.search(r'<pre id="out">([^<]*)</pre>', dom).group(1))
    assert got["page"] <= got["view"], got  # nothing sticks out of the window
    assert got["table"] <= got["view"], got
    assert len(got["rows"]) == 8 and max(got["rows"]) < 40, got  # long producers and paths do not grow their rows


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
