import csv
import json

import pytest
from click.testing import CliRunner

from cminet.cli import main
from cminet.evaluate import markdown, rank

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


@pytest.mark.torch_free
def test_rank_orders_by_mean_rank():
    def stats(mi, vif, qabf, sf):
        return {k: {"mean": v} for k, v in zip(("MI", "VIF", "Qabf", "SF"), (mi, vif, qabf, sf), strict=True)}

    ranks = rank({"ct": {"a": stats(3, 1, 1, 1), "b": stats(2, 2, 2, 2), "c": stats(1, 3, 3, 3)}})["ct"]
    # Higher is better: c wins VIF, Qabf and SF (rank 1) and is last on MI (rank 3).
    assert [ranks["ranks"][m]["mean_rank"] for m in "abc"] == [2.5, 2.0, 1.5]
    assert ranks["best"] == "c" and "best5" not in ranks  # grey pairs: no colour to rank


@pytest.mark.torch_free
def test_functional_pairs_also_rank_over_five_with_colour_lower_better():
    def stats(mi, vif, qabf, sf, colour):
        names = ("MI", "VIF", "Qabf", "SF", "ColourDE")
        return {k: {"mean": v, "std": 0.0, "n": 3} for k, v in zip(names, (mi, vif, qabf, sf, colour), strict=True)}

    ranks = rank({"pet": {"a": stats(3, 1, 1, 1, 5.0), "b": stats(2, 2, 2, 2, 9.0), "c": stats(1, 3, 3, 3, 20.0)}})
    pet = ranks["pet"]
    assert [pet["ranks"][m]["ColourDE"] for m in "abc"] == [1, 2, 3]  # the smallest ΔE ranks first
    assert [pet["ranks"][m]["mean_rank5"] for m in "abc"] == [2.2, 2.0, 1.8]
    assert pet["best"] == "c" and pet["best5"] == "c"
    assert "mean rank (5)" in markdown({"pet": {m: {**s, "EN": {"mean": 1, "std": 0, "n": 3}} for m, s in
                                                 {"a": stats(3, 1, 1, 1, 5.0)}.items()}},
                                       rank({"pet": {"a": stats(3, 1, 1, 1, 5.0)}}))


@pytest.mark.torch_free
def test_evaluate_reports_colour_fidelity_and_shifted_copies(tmp_path):
    root = write_dataset(tmp_path / "data", n=4)
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["evaluate", "--data", str(root), "--split", "train", "--methods",
                                       "max,laplacian", "--shifted", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    pet = [r for r in rows if r["pair"] == "pet_mri"]
    ct = [r for r in rows if r["pair"] == "ct_mri"]
    assert len(pet) == 2 * 3 * 3 and len(ct) == 2 * 3  # methods × train pairs × (pair + 2 copies); CT no copies
    assert sum("~" in r["name"] for r in pet) == 2 * 3 * 2
    assert all(float(r["ColourDE"]) >= 0 for r in pet) and all(r["ColourDE"] == "nan" for r in ct)
    summary = json.loads((out / "summary.json").read_text())
    assert "ColourDE" in summary["summary"]["pet_mri"]["max"] and "ColourDE" not in summary["summary"]["ct_mri"]["max"]
    assert summary["shifted_copies"] == 2
    assert "ColourDE" in (out / "summary.md").read_text()


def test_evaluate_val_of_one_type_scores_the_cases_a_full_run_held_out(tmp_path):
    # split_validation shuffles every type's cases with one RNG: `--pairs spect_mri` must
    # not re-carve SPECT alone (it would score pairs a run on all types trained on).
    from cminet.data import split_validation
    from cminet.runtime.folders import list_pairs

    root = write_dataset(tmp_path / "data", pairs=("ct_mri",), n=9, size=32, cases=9)
    write_dataset(root, pairs=("spect_mri",), n=13, size=32, cases=13)  # train.txt: 8 and 12 cases
    full = split_validation(list_pairs(root, ("ct_mri", "spect_mri"), "train"))[1]
    held_out = {r.name for r in full if r.pair == "spect_mri"}
    assert held_out != {r.name for r in split_validation(list_pairs(root, ("spect_mri",), "train"))[1]}
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["evaluate", "--data", str(root), "--split", "val", "--pairs", "spect_mri",
                                       "--methods", "max", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {r["name"] for r in csv.DictReader((out / "metrics.csv").open())} == held_out
