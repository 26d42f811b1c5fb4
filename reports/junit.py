"""JUnit XML for CI systems: one test case per (check, stage, comparison); a failure carries the metric,
its value and the gate; crash and timeout rows are errors; skips are skipped."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from fp4check.reports.table import counts


def render_junit(meta: dict, rows: list[dict]) -> str:
    c = counts(rows)
    suite = ET.Element(
        "testsuite",
        name=f"fp4check {meta.get('run_id', '')}".strip(),
        tests=str(len(rows)),
        failures=str(c.get("fail", 0)),
        errors=str(c.get("error", 0) + c.get("crash", 0) + c.get("timeout", 0)),
        skipped=str(c.get("skip", 0)),
        timestamp=str(meta.get("start", "")),
    )
    for r in rows:
        name = f"{r['stage']} vs {r.get('compared_to')} ({r.get('propagation')}, {r.get('scenario')})"
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"{r.get('check')}.{r.get('backend')}",
            name=name,
            time=f"{float(r['seconds']):.3f}" if r.get("seconds") not in (None, "") else "0",
        )
        detail = f"{r.get('metric')} = {r.get('value')} (gate >= {r.get('threshold')}); {r.get('message') or ''}"
        if r["status"] == "fail":
            ET.SubElement(case, "failure", message=detail.strip("; "), type="threshold").text = detail
        elif r["status"] in ("error", "crash", "timeout"):
            ET.SubElement(case, "error", message=r.get("message") or r["status"], type=r["status"]).text = detail
        elif r["status"] == "skip":
            ET.SubElement(case, "skipped", message=r.get("message") or "")
    suites = ET.Element("testsuites")
    suites.append(suite)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)
