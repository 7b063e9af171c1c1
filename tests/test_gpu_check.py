"""The GPU check's own logic (benchmarks/gpu_prepare.py, gpu_summary.py), without a GPU: which
wheels travel and get installed, the import audit, and the verdicts against the goals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from packaging.tags import Tag

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_prepare  # noqa: E402
import gpu_summary  # noqa: E402

PY312 = {Tag("py312", "none", "any"), Tag("cp312", "cp312", "manylinux_2_28_x86_64"), Tag("py3", "none", "any")}
PY311 = {Tag("py3", "none", "any"), Tag("cp311", "cp311", "manylinux_2_28_x86_64")}


def _installed(monkeypatch, versions: dict):
    monkeypatch.setattr(gpu_prepare, "installed_version", lambda name: versions.get(name))


def _names(paths):
    return sorted(p.name.split("-")[0] for p in paths)


def test_wheel_list_parses_and_every_rule_is_known():
    rows = gpu_prepare.read_wheels()
    assert {r["rule"] for r in rows} == {"always", "ifneed", "dryrun"}
    always = {r["name"] for r in rows if r["rule"] == "always"}
    assert {"trl", "datasets", "dill", "multiprocess"} <= always
    for r in rows:  # the pinned wheel satisfies its own requirement
        assert r["requirement"].specifier.contains(r["version"], prereleases=True), r["wheel"]


def test_device_installs_missing_packages_and_only_failing_ifneed_ones(monkeypatch):
    # the device image: new enough pyarrow and fsspec, an old peft, no trl/datasets/dill/multiprocess/submitit
    _installed(monkeypatch, {"pyarrow": "25.0.0", "fsspec": "2025.3.0", "peft": "0.17.1", "transformers": "5.17.0"})
    chosen, notes = gpu_prepare.choose(gpu_prepare.read_wheels(), dry_run=False, own_tags=PY312)
    assert _names(chosen) == ["datasets", "dill", "multiprocess", "peft", "submitit", "trl"]
    assert all(p.parent.name == ".whl" for p in chosen)
    assert any("keeping the installed 25.0.0" in n for n in notes)


def test_too_old_pyarrow_is_replaced(monkeypatch):
    _installed(monkeypatch, {"pyarrow": "19.0.1", "fsspec": "2026.9.0", "peft": "0.21.2"})
    chosen, _ = gpu_prepare.choose(gpu_prepare.read_wheels(), dry_run=False, own_tags=PY312)
    assert "pyarrow" in _names(chosen)


def test_dry_run_adds_the_device_versions_and_stands_in_for_foreign_wheels(monkeypatch):
    _installed(monkeypatch, {"pyarrow": "26.0.1", "fsspec": "2026.9.0", "peft": "0.21.2", "multiprocess": "0.70.19"})
    chosen, notes = gpu_prepare.choose(gpu_prepare.read_wheels(), dry_run=True, own_tags=PY311)
    names = _names(chosen)
    assert "transformers" in names and "huggingface_hub" in names  # the device's versions, from .whl-dryrun
    assert "multiprocess" not in names  # py312-only wheel: this Python's own copy stands in
    assert any("multiprocess" in n and "not for this Python" in n for n in notes)
    # without a usable copy of its own, the rehearsal refuses instead of testing something else
    _installed(monkeypatch, {"pyarrow": "26.0.1", "fsspec": "2026.9.0", "peft": "0.21.2"})
    chosen, notes = gpu_prepare.choose(gpu_prepare.read_wheels(), dry_run=True, own_tags=PY311)
    assert chosen is None and "multiprocess" in notes[-1]


def test_import_audit_flags_a_package_the_device_lacks(tmp_path):
    log = tmp_path / "imports"
    log.mkdir()
    (log / "1.txt").write_text("\n".join(["os", "torch", "trl", "clinic", "_cython_3_2_4", "yaml"]))
    args = type("Args", (), {"import_log": str(log), "out": str(tmp_path / "audit.json")})
    assert gpu_prepare.audit(args) == 0
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["missing_on_device"] == {} and "trl" in report["carried_used"]
    (log / "2.txt").write_text("gguf\n")  # clinic's GGUF loader: not on the image, not carried
    assert gpu_prepare.audit(args) == 1
    assert list(json.loads((tmp_path / "audit.json").read_text())["missing_on_device"]) == ["gguf"]


def _surgery_report(time_ratio: float, mem_ratio: float, complete: bool = True) -> dict:
    variants = [{"variant": "sft", "step_s": 0.1, "peak_mem_mb": 20480.0, "time_ratio": 1.0, "mem_ratio": 1.0},
                {"variant": "surgery-clinic", "step_s": 0.1 * time_ratio, "peak_mem_mb": 20480.0 * mem_ratio,
                 "time_ratio": time_ratio, "mem_ratio": mem_ratio}]
    return {"shape": {"name": "llama-1b"}, "bf16": True, "steps": 10, "complete": complete,
            "results": [{"batch": 10, "seq": 512, "variants": variants}]}


@pytest.mark.parametrize(("time_ratio", "mem_ratio", "meets"), [(1.14, 1.0, True), (1.16, 1.0, False), (1.0, 1.11, False)])
def test_surgery_verdicts_use_both_goals(time_ratio, mem_ratio, meets):
    gpu_summary._DRY["run"] = False
    lines, verdicts = gpu_summary.surgery_lines(_surgery_report(time_ratio, mem_ratio), dry=False)
    assert verdicts["10x512"]["meets"] is meets
    assert verdicts["2x2048"] is None  # the second goal shape did not run: not measured, not a pass
    assert any("2x2048" in line and "not measured" in line for line in lines)


def test_tvaccine_verdict_and_a_run_cut_short(tmp_path):
    def rec(tv_mb, vaccine_mb):
        results = {"sft": {"step_s": 1.0, "peak_mb": 15000.0}, "vaccine": {"step_s": 2.0, "peak_mb": vaccine_mb},
                   "tvaccine": {"step_s": 2.5, "peak_mb": tv_mb}}
        return {"cuda": {"shape": {"name": "llama2-7b"}, "batch": 10, "seq_len": 200, "timed_steps": 5, "complete": False,
                         "results": results, "ratios_to_sft": {},
                         "tvaccine_vs_vaccine": {"memory": round(tv_mb / vaccine_mb, 3)}}}

    gpu_summary._DRY["run"] = False
    lines, verdict = gpu_summary.tvaccine_lines(rec(15000.0, 30000.0), dry=False)
    assert verdict["meets"] and "RUN CUT SHORT" in lines[0]
    _, verdict = gpu_summary.tvaccine_lines(rec(21504.0, 40000.0), dry=False)  # 21 GB: over the 20 GB goal
    assert not verdict["meets"]
    _, verdict = gpu_summary.tvaccine_lines(rec(15000.0, 20000.0), dry=False)  # 0.75x Vaccine
    assert not verdict["meets"]


def test_install_refuses_a_dry_run(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({"dry_run": True, "gpu": "no GPU"}))
    with pytest.raises(SystemExit) as exc:
        gpu_summary.install(tmp_path)
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("gpu_summary: error: ")
