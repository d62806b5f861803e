import csv
import json

from click.testing import CliRunner

from cminet.cli import main
from cminet.evaluate import rank

from .helpers import tiny_checkpoint, write_dataset


def test_evaluate_writes_tables_sheet_and_ranks(tmp_path):
    root = write_dataset(tmp_path / "data", n=6)
    weights = tiny_checkpoint(tmp_path / "w.safetensors")
    fused = tmp_path / "other_method"
    assert CliRunner().invoke(main, ["fuse", "--data", str(root), "--split", "train", "--out", str(fused),
                                     "--weights", str(weights)]).exit_code == 0
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["evaluate", "--data", str(root), "--split", "train", "--weights", str(weights),
                                       "--fused", f"mine={fused}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Ranks on MI, VIF, Qabf, SF" in result.output
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["method"] for r in rows} == {"cminet", "average", "max", "laplacian", "mine"}
    assert len(rows) == 5 * 2 * 5  # methods × pair types × train pairs
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["summary"]) == {"ct_mri", "pet_mri"}
    # Fusing with the same weights through the CLI and in memory scores the same.
    ct = summary["summary"]["ct_mri"]
    assert abs(ct["mine"]["MI"]["mean"] - ct["cminet"]["MI"]["mean"]) < 1e-9
    assert (out / "comparison.png").stat().st_size > 1000


def test_rank_orders_by_mean_rank():
    def stats(mi, vif, qabf, sf):
        return {k: {"mean": v} for k, v in zip(("MI", "VIF", "Qabf", "SF"), (mi, vif, qabf, sf), strict=True)}

    ranks = rank({"ct": {"a": stats(3, 1, 1, 1), "b": stats(2, 2, 2, 2), "c": stats(1, 3, 3, 3)}})["ct"]
    # Higher is better: c wins VIF, Qabf and SF (rank 1) and is last on MI (rank 3).
    assert [ranks["ranks"][m]["mean_rank"] for m in "abc"] == [2.5, 2.0, 1.5]
    assert ranks["best"] == "c"
