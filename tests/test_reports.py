"""HTML report, JUnit XML, diff and history over real results folders."""

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from conftest import run_cli

SUPPORT = Path(__file__).resolve().parent / "support_backends.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_modelopt):
    root = tmp_path_factory.mktemp("runs")
    good, bad = root / "a-good", root / "b-noclamp"
    assert run_cli("run", "--suite", "quick", "--checkpoint", str(tiny_modelopt), "--out", str(good)).exit_code == 0
    r = run_cli(
        "run",
        "--suite",
        "quick",
        "--checkpoint",
        str(tiny_modelopt),
        "--out",
        str(bad),
        "--backend",
        f"{SUPPORT}:NoClamp",
    )
    assert r.exit_code == 1
    return root, good, bad


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.title, self.in_title, self.rows, self.fail_rows, self.external = "", False, 0, [], []
        self.in_all, self.tr_class = False, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "title" and not self.title:  # the page title, not the SVG cells' tooltips
            self.in_title = True
        if tag == "table" and a.get("id") == "rows":
            self.in_all = True
        if tag == "tr" and self.in_all and "data-status" in a:
            self.rows += 1
            if a["data-status"] == "fail":
                self.fail_rows.append(a.get("class"))
        for k in ("src", "href"):
            if a.get(k, "").startswith(("http", "//")):
                self.external.append(a[k])

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if tag == "table":
            self.in_all = False

    def handle_data(self, data):
        if self.in_title:
            self.title += data


def test_html_report_is_self_contained_and_complete(runs, tmp_path):
    _, _, bad = runs
    out = tmp_path / "r.html"
    r = run_cli("report", str(bad), "--html", str(out))
    assert r.exit_code == 1
    text = out.read_text()
    page = _Page()
    page.feed(text)
    meta = json.loads((bad / "meta.json").read_text())
    assert page.title == f"fp4check report {meta['run_id']}"
    n = len((bad / "results.jsonl").read_text().splitlines())
    assert page.rows == n
    assert page.fail_rows and set(page.fail_rows) == {"fail"}  # failing rows carry the highlight class
    assert not page.external and "<script src" not in text and "<link" not in text
    assert 'aria-label="cosine heat map"' in text and "L1.act" in text  # the heat map has the failing cell
    assert "gate" in text and "l1.reference" in text  # the gates used
    assert len(text.encode()) < 2 * 2**20


def test_junit_has_a_case_per_row_and_failures_carry_the_numbers(runs, tmp_path):
    _, _, bad = runs
    out = tmp_path / "r.xml"
    run_cli("report", str(bad), "--junit", str(out))
    suite = ET.parse(out).getroot().find("testsuite")
    rows = [json.loads(x) for x in (bad / "results.jsonl").read_text().splitlines()]
    assert int(suite.get("tests")) == len(rows) == len(suite.findall("testcase"))
    failures = suite.findall("testcase/failure")
    assert len(failures) == sum(r["status"] == "fail" for r in rows) > 0
    assert re.search(r"cosine = 0\.9\d+ \(gate >= 0\.9", failures[0].get("message"))


def test_diff_flags_regressions_and_exits_1(runs, tmp_path):
    _, good, bad = runs
    same = run_cli("diff", str(good), str(good), "--json")
    assert same.exit_code == 0 and json.loads(same.stdout)["regressions"] == []
    r = run_cli("diff", str(good), str(bad), "--json", "--html", str(tmp_path / "d.html"))
    assert r.exit_code == 1
    regs = json.loads(r.stdout)["regressions"]
    assert regs and all(
        x["stage"].endswith(".act") or x["stage"].rsplit(".", 1)[-1] in ("act", "quant_l2", "l2", "combine", "out")
        for x in regs
    )
    assert any("pass -> fail" in x["why"] for x in regs) and any("cosine dropped" in x["why"] for x in regs)
    assert "regression" in (tmp_path / "d.html").read_text()
    # the rule is tunable: with huge limits only the pass -> fail rows remain
    loose = json.loads(
        run_cli("diff", str(good), str(bad), "--json", "--max-cosine-drop", "1", "--max-sqnr-drop", "1000").stdout
    )["regressions"]
    assert loose and all(x["why"].startswith("pass -> ") for x in loose)


def test_diff_sees_new_nan_and_vanished_stages(runs, tmp_path):
    _, good, _ = runs
    edited = tmp_path / "edited"
    shutil.copytree(good, edited)
    rows = [json.loads(x) for x in (edited / "results.jsonl").read_text().splitlines()]
    rows[0]["nan_out"] = 3  # keeps status pass: only the NaN rule can see it
    dropped = rows.pop()
    (edited / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = json.loads(run_cli("diff", str(good), str(edited), "--json").stdout)
    assert any("new NAN" in x["why"] for x in d["regressions"])
    assert dropped["stage"] in d["vanished"]


def test_history_orders_runs_and_shows_drift(runs, tmp_path):
    root, _, _ = runs
    out = tmp_path / "h.html"
    r = run_cli("history", str(root), "--json", "--html", str(out))
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert len(d["runs"]) == 2
    worst = d["stages"][0]
    assert worst["stage"].endswith(".act") and worst["change"] < -0.01 and len(worst["values"]) == 2
    assert "<svg" in out.read_text()
    assert run_cli("history", str(tmp_path / "none")).exit_code == 2


def test_quick_suite_covers_every_layer_type(runs):
    _, good, _ = runs
    rows = [json.loads(x) for x in (good / "results.jsonl").read_text().splitlines()]
    assert {r["layer_type"] for r in rows} == {"C4A", "C128A", "SWA"}
    assert {"hash", "skewed", "uniform", "natural"} <= {r["scenario"] for r in rows}
    meta = json.loads((good / "meta.json").read_text())
    assert meta["suite"] == "quick" and meta["thresholds"]["l1.reference"] == ["cosine", 0.98]
