"""The CI workflows parse and do what README says: a b200 job that gates on the ci suite and on diff."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load(name):
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def test_b200_workflow():
    wf = _load("fp4check-b200.yml")
    job = wf["jobs"]["b200"]
    assert job["runs-on"] == ["self-hosted", "b200"]
    script = "\n".join(s.get("run", "") for s in job["steps"])
    assert "fp4check doctor" in script
    assert "fp4check run --suite ci" in script and "vars.FP4CHECK_CHECKPOINT" in script
    assert "--html" in script and "--junit" in script and "fp4check diff baseline/fp4check-run fp4check-run" in script
    uses = [s.get("uses", "") for s in job["steps"]]
    assert any(u.startswith("actions/upload-artifact") for u in uses)
    assert any("junit" in u for u in uses) and any("download-artifact" in u for u in uses)


def test_cpu_workflow_runs_the_local_ci_entry():
    wf = _load("tests.yml")
    steps = wf["jobs"]["cpu"]["steps"]
    assert any(s.get("run") == "bash .ci/run" for s in steps)
    assert "pytest" in (ROOT / ".ci" / "run").read_text()
