"""The runner's RESULTS.md bookkeeping: a run replaces only the sections of its suites."""

from benchmarks import run


def test_results_md_replaces_only_the_sections_that_ran(tmp_path, monkeypatch):
  path = tmp_path / "RESULTS.md"
  monkeypatch.setattr(run, "RESULTS_PATH", str(path))
  order = ["quadratic", "logistic", "workloads"]
  run.write_results({n: run.section(n, f"## {n}\n\nold {n}", "env", 60) for n in order}, order)
  before = run.split_sections(path.read_text())
  assert list(before) == order
  run.write_results(
    {"workloads": run.section("workloads", "## workloads\n\nnew", "env", 120)}, order
  )
  after = run.split_sections(path.read_text())
  assert list(after) == order
  assert after["quadratic"] == before["quadratic"] and after["logistic"] == before["logistic"]
  assert "new" in after["workloads"] and "old workloads" not in after["workloads"]
  assert "2.0 min" in after["workloads"]
  # A section of a suite that is no longer registered is dropped.
  run.write_results({}, ["quadratic", "workloads"])
  assert list(run.split_sections(path.read_text())) == ["quadratic", "workloads"]
