"""The experiment entry points, run end to end on small settings."""

import json

import pytest

from experiments import plan_check


@pytest.mark.slow
def test_plan_check_reports_matching_bytes_and_outputs(tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code = plan_check.main(["--model", "resnet18", "--mesh", "2", "--batch", "2",
                            "--image-size", "16", "--report", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    comm = report["comm_bytes_per_sample"]
    assert comm["disco_hlo"] == comm["disco"] > 0
    assert report["comm_reduction"] == pytest.approx(comm["dense_split"] / comm["disco"])
    assert report["quality"]["disco"] is None  # random masks: accuracy not measured
    assert "reduction" in capsys.readouterr().out


def test_plan_check_names_a_bad_mesh_size(capsys):
    assert plan_check.main(["--model", "resnet18", "--mesh", "3", "--image-size", "8"]) == 2
    assert "does not divide over 3 nodes" in capsys.readouterr().err
