"""``animatex-train ablate collate`` prints the seven-metric, Table 4/5/6-shaped table from each ablation's
``eval/metrics.json``, with the paper's numbers beside ours when the protocol matches."""

from __future__ import annotations

import json

from animatex_train.cli.ablate import main as ablate_main


def _write_eval(run_dir, protocol, psnr):
    (run_dir / "eval").mkdir(parents=True)
    metrics = {"psnr_star": psnr, "ssim": 0.5, "l1": 2.5e-4, "lpips": 0.4, "fid": 30.0, "fid_vid": 40.0, "fvd": 500.0}
    (run_dir / "eval" / "metrics.json").write_text(json.dumps({"metrics": metrics, "protocol": {"protocol": protocol}}))


def test_collate_prints_the_seven_metrics_with_the_paper_beside_ours(tmp_path, capsys):
    out = tmp_path / "campaign"
    _write_eval(out / "full", "cross_driven", 14.25)
    _write_eval(out / "wo_epi", "self_driven", 11.5)
    assert ablate_main(["collate", "--out", str(out), "--only", "wo_epi,full,wo_ipi"]) == 0
    printed = capsys.readouterr().out
    lines = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
    assert "PSNR*↑ | SSIM↑ | L1↓ | LPIPS↓ | FID↓ | FID-VID↓ | FVD↓" in printed
    assert "14.25 (13.60)" in lines["full"] and "2.50E-04 (1.02E-04)" in lines["full"]
    assert "11.50 |" in lines["wo_epi"] and "(12.63)" not in lines["wo_epi"]  # other protocol: no paper number
    assert "not evaluated" in lines["wo_ipi"]
    assert (out / "ablation_metrics.md").read_text() in printed
