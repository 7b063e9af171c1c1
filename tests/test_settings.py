"""The torch thread policy: explicit settings win; otherwise only the cores other processes leave free."""

from __future__ import annotations

import pytest

from clinic.errors import ClinicError
from clinic.settings import torch_threads


@pytest.fixture
def no_thread_env(monkeypatch):
    monkeypatch.delenv("CLINIC_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize("cores,load,expected", [
    (2, 0.0, None), (2, 0.4, None),          # quiet: torch's default stands
    (2, 1.0, 1), (2, 0.6, 1), (2, 3.7, 1),   # one core or more taken: one thread, never zero
    (16, 4.2, 12), (16, 40.0, 1),
])
def test_free_cores(no_thread_env, cores, load, expected):
    threads, reason = torch_threads(cores=cores, busy=load)
    assert threads == expected
    if expected is not None:
        assert f"{load:.1f} of {cores} cores busy" in reason and f"using {expected} torch thread" in reason


def test_busy_cores_is_the_busy_share_of_the_interval_not_the_load_average():
    from clinic.settings import busy_cores

    # (busy, total) jiffies: 150 of 200 busy in the interval on 2 cores = 1.5 cores
    reads = iter([(1000, 5000), (1150, 5200)])
    assert busy_cores(2, interval=0.0, read=lambda: next(reads)) == pytest.approx(1.5)
    reads = iter([(1000, 5000), (1000, 5200)])  # idle now, whatever the load average says
    assert busy_cores(2, interval=0.0, read=lambda: next(reads)) == 0.0
    assert busy_cores(2, interval=0.0, read=lambda: None) is None  # no /proc/stat


def test_cpu_times_reads_proc_stat(tmp_path):
    from clinic.settings import _cpu_times

    stat = tmp_path / "stat"
    stat.write_text("cpu  10 2 30 400 5 0 1 0 0 0\ncpu0 5 1 15 200 2 0 0 0 0 0\n")
    assert _cpu_times(str(stat)) == (43, 448)  # idle 400 + iowait 5 are not busy
    assert _cpu_times(str(tmp_path / "missing")) is None
    # guest and guest_nice are already inside user and nice: not counted twice
    stat.write_text("cpu  10 2 30 400 5 0 1 0 7 3\n")
    assert _cpu_times(str(stat)) == (43, 448)


def test_explicit_settings_win(no_thread_env, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert torch_threads(cores=2, busy=5.0)[0] is None  # torch reads OMP_NUM_THREADS itself
    monkeypatch.setenv("CLINIC_THREADS", "3")
    assert torch_threads(cores=2, busy=5.0) == (3, "CLINIC_THREADS=3")


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_clinic_threads(no_thread_env, monkeypatch, value):
    monkeypatch.setenv("CLINIC_THREADS", value)
    with pytest.raises(ClinicError, match="CLINIC_THREADS must be a positive whole number"):
        torch_threads(cores=2, busy=0.0)


def test_cli_applies_and_says_so(no_thread_env, monkeypatch, capsys):
    import torch

    from clinic import settings

    monkeypatch.setattr(settings, "torch_threads", lambda: (1, "load average 1.0 on 2 cores: using 1 torch thread(s)"))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        settings.apply_cpu_math(say=True)
        assert torch.get_num_threads() == 1
        assert "using 1 torch thread" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_one_lora_target_list_without_torch():
    """Every LoRA default is clinic.settings.LORA_TARGETS, and reading it (as `clinic curate`'s
    parser does) imports no torch."""
    import subprocess
    import sys

    from clinic.stages.curate import CurateConfig
    from clinic.modeling.training import TrainConfig
    from clinic.modeling.lora import LoraFields
    from clinic.settings import LORA_TARGETS

    assert LoraFields().lora_targets_list() == list(LORA_TARGETS)
    assert TrainConfig().lora_targets == CurateConfig(model="m").lora_targets == ",".join(LORA_TARGETS)
    code = ("import sys; import clinic.settings, clinic.stages.curate; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- subnormal floats flushed to zero (CLINIC_FLUSH_DENORMAL) ---------------------------------------

@pytest.mark.parametrize("value, expected", [(None, True), ("1", True), ("yes", True), ("0", False), ("off", False)])
def test_flush_denormal_setting(monkeypatch, value, expected):
    from clinic.settings import flush_denormal

    if value is None:
        monkeypatch.delenv("CLINIC_FLUSH_DENORMAL", raising=False)
    else:
        monkeypatch.setenv("CLINIC_FLUSH_DENORMAL", value)
    assert flush_denormal() is expected


def test_bad_flush_denormal_is_a_one_line_error(tmp_path):
    import subprocess
    import sys

    env = {**__import__("os").environ, "CLINIC_FLUSH_DENORMAL": "maybe"}
    proc = subprocess.run([sys.executable, "-m", "clinic.cli", "run", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "clinic: error: CLINIC_FLUSH_DENORMAL must be 1 or 0, got 'maybe'"


# A fresh interpreter per case: the flag must be set before OpenMP creates its worker threads, and
# this one's were created long ago. 2^20 elements split over two threads, so each worker's half
# counts; 1e-30 * 1e-9 = 1e-39 is subnormal in float32 (the smallest normal number is 1.2e-38).
_SURVIVORS = """
import sys
from clinic.cli import main
rc = main(["run", sys.argv[1]])  # a compute command: the CPU is set up before the missing file is noticed
import torch
x = torch.full((1 << 20,), 1e-30)
print(rc, int(((x * 1e-9) != 0).sum()))
"""


@pytest.mark.parametrize("flag, survivors", [(None, 0), ("0", 1 << 20)])
def test_compute_commands_flush_denormals_in_every_thread(tmp_path, flag, survivors):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("CLINIC_FLUSH_DENORMAL", "CLINIC_THREADS")}
    env.update({"OMP_NUM_THREADS": "2", **({"CLINIC_FLUSH_DENORMAL": flag} if flag else {})})
    proc = subprocess.run([sys.executable, "-c", _SURVIVORS, str(tmp_path / "none.yaml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.split() == ["2", str(survivors)], proc.stderr
