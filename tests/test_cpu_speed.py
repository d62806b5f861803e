

@pytest.mark.slow
def test_export_int8_where_the_cpu_has_vnni(tmp_path, monkeypatch):
    """The accepted path, with VNNI faked: INT8 ONNX written beside the others, its drift
    against FP32 PyTorch in the report, calibrated on the training pairs."""
    from click.testing import CliRunner

    from cminet.export import int8
    from cminet.export.cli import main as export_main

    from .helpers import tiny_checkpoint, write_dataset

    monkeypatch.setattr(int8, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    weights = tiny_checkpoint(tmp_path / "tiny.safetensors")
    data = write_dataset(tmp_path / "data", n=3, size=32)
    out = tmp_path / "out"
    result = CliRunner().invoke(export_main, ["--weights", str(weights), "--out", str(out), "--int8",
                                              "--calibration", str(data), "--no-verify"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "export_report.json").read_text())["int8"]
    assert (out / int8.INT8_FILE).is_file() and report["path"] == str(out / int8.INT8_FILE)
    assert report["cpu"] == "this CPU has avx512_vnni" and report["calibration_pairs"] == 4
    assert report["drift"]["count"] == 3 and report["drift"]["max_abs"] > 0
    with pytest.raises(Exception, match="calibration"):
        CliRunner().invoke(export_main, ["--out", str(tmp_path / "o2"), "--int8"], catch_exceptions=False)
