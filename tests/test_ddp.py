"""Multi-process training: two CPU processes (gloo, DDP) on a per-process batch of 2 train the same
adapter as one process on a batch of 4, for SFT, two multi-pass methods (Vaccine, Booster) and
Surgery; every other method runs under DDP; engines a method cannot run under are refused.

The data rows all have the same token count, so a mean over 4 rows equals the mean of two means
over 2 rows, and the sampler hands rows 0-1 / 2-3 of the global batch to ranks 0 / 1: the two runs
compute the same gradients up to float summation order.

Why the compared runs train in float64. The two runs sum the same terms in different orders (two
half-batch gradients all-reduced vs one full-batch reduction; and the kernels' own order depends on
the CPU: AVX2 and AVX-512 machines pick different ones). A gradient element that is a cancelling sum
has a relative rounding error of about n * u * sum|terms| / |sum| (u the unit roundoff), unbounded in
general, and Adam turns a relative error of a near-zero gradient into an absolute parameter error of
up to about lr. In float32 (u = 2**-24) that was seen as 1 of 1,024 LoRA elements off by 2.08e-6 on
AVX-512 machines and within 2e-6 on AVX2 ones, so no float32 tolerance both holds everywhere and
stays tight. In float64 (u = 2**-53, 2**29 times smaller) the largest differences measured were
2.4e-16 absolute and 3.5e-15 relative (all four methods); the tolerances below (atol 1e-10, rtol 1e-8)
leave a margin of 10**5 and stay 10**7 below what a real error does (a wrong gradient average or a
missing sync moves an element by ~lr = 1e-3 after two Adam steps). The float64 comparison also
caught a real one the float32 tolerance hid: Vaccine's DDP perturbation normalised the per-process
gradients, not the global batch's, so its 1e-7 in ``rho * g / (||g|| + 1e-7)`` acted at another
scale (4e-10 absolute after two steps; fixed in ``perturbation_from_grads``).

The logged loss is the exception: transformers' causal-LM loss casts the logits to float32
(``logits.float()`` in ``ForCausalLMLoss``) whatever the model's dtype, so the loss value is a
float32 mean of at most 4 rows x 64 tokens = 256 positive terms, summed in another order by the
two runs (two means of 2 rows averaged, one mean of 4). With no cancellation its relative error is
at most n * u = 256 * 2**-24 = 1.5e-5 (LOSS_RTOL); measured up to 1.7e-7 (2026-12-01, once the
LoRA initialisation was seeded; the earlier initialisation happened to give equal sums). The gradient is not affected the same way: each token's float32 softmax-minus-one-hot is
the same in both runs and the 1/4 vs 1/2-then-averaged scales are powers of two, so the sums that
differ are taken in float64 (the grad_norm keeps rtol 1e-8). A real error in the loss (no average
across processes, one process's half only) moves it by tens of percent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from clinic.cli import main
from clinic.errors import ClinicError
from clinic.methods.engines import check_engine, detect_engine

sys.path.insert(0, str(Path(__file__).parent))
from _ddp_worker import float64_models  # noqa: E402

WORKER = Path(__file__).with_name("_ddp_worker.py")
COMMON = ["--model", "tiny-random-llama", "--max-steps", "2", "--lr", "1e-3", "--max-length", "64",
          "--logging-steps", "1", "--seed", "0"]
COMPARED = ["sft", "vaccine", "booster", "surgery"]  # DDP == one process with the global batch


def _ddp_methods() -> list[str]:
    from clinic.methods.registry import METHODS

    return [name for name, spec in METHODS.items() if "ddp" in spec.engines]


SMOKE = [m for m in _ddp_methods() if m not in COMPARED]  # every other method that declares DDP runs under it
LOSS_RTOL = 4 * 64 * 2**-24  # float32 loss: n * u, see the module docstring


def _rows(path: Path, kind: str) -> Path:
    # every prompt/response pair has the same length in bytes = tokens (byte-level tiny tokenizer)
    rows = [{"prompt": f"{kind} question {i:02d}?", "response": f"{kind} answer {i:02d}."} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _argv(method: str, data: Path, harm: Path) -> list[str]:
    """The command line of one method's run: the methods' own settings where they need them, else
    the method's first stage on the data (with the harmful stream, if its config has one)."""
    harmful = ["--harmful-source", str(harm), "--harmful-size", "8"]
    known = {
        "sft": ["align", "--method", "sft", "--source", str(data)],
        "vaccine": ["align", "--method", "vaccine", "--source", str(data)],
        "booster": ["align", "--method", "booster", "--source", str(data), *harmful],
        "tar-lite": ["align", "--method", "tar-lite", "--source", str(data), "--no-reproduce-bug", *harmful],
        "repnoise": ["align", "--method", "repnoise", "--source", str(data), *harmful],
        "tvaccine": ["align", "--method", "tvaccine", "--source", str(data), "--active-layers", "1", "--resample-every", "1",
                     *harmful],
        "surgery": ["finetune", "--method", "surgery", "--source", str(data), "--harmful-probes", str(harm),
                    "--harmful-probe-pool", "8", "--harmless-probes", str(data), "--harmless-probe-pool", "8"],
        "lisa": ["finetune", "--method", "lisa", "--source", str(data), "--guide-data", str(harm), "--guide-size", "8",
                 "--align-steps", "1", "--finetune-steps", "1", "--prox-start", "0"],
    }
    if method in known:
        return known[method]
    import dataclasses

    from clinic.methods.registry import METHODS

    spec = METHODS[method]
    streams = harmful if "harmful_source" in {f.name for f in dataclasses.fields(spec.config)} else []
    return [spec.stages[0], "--method", method, "--source", str(data), *streams]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launch: list[str], log: Path, meanwhile, cpu: bool = True) -> tuple[int, str]:
    """Run an ``accelerate launch`` command (CPU processes on gloo unless ``cpu=False``) while
    ``meanwhile()`` runs the one-process references here (they overlap the processes' start-up).
    Returns the launcher's exit code and its log."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONWARNINGS="ignore")
    env.pop("ACCELERATE_USE_CPU", None)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    with log.open("w") as fh, subprocess.Popen(launch, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                               start_new_session=True) as proc:
        try:
            meanwhile()
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:  # the launcher and its workers
                os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, log.read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run every method once with 2 processes x batch 2 (one launch) and, for the compared ones,
    once in this process with batch 4."""
    base = tmp_path_factory.mktemp("ddp")
    data, harm = _rows(base / "good.jsonl", "good"), _rows(base / "harm.jsonl", "harm")
    commands = [_argv(m, data, harm) + COMMON + ["--batch-size", "2", "--output", str(base / f"ddp-{m}")]
                for m in COMPARED + SMOKE]
    (base / "commands.json").write_text(json.dumps(commands))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), str(WORKER), str(base / "commands.json")]

    def one_process_runs():
        with float64_models():  # as the worker does
            _one_process_runs()

    def _one_process_runs():
        for m in COMPARED:
            assert main(_argv(m, data, harm) + COMMON + ["--batch-size", "4", "--output", str(base / f"single-{m}")]) == 0

    code, log = _launch(launch, base / "launch.log", one_process_runs)
    assert code == 0, log[-6000:]
    return base


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def _logged(run: Path, key: str) -> list[float]:
    return [row[key] for row in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if key in row]


@pytest.mark.parametrize("method", COMPARED)
def test_two_processes_train_like_one_with_the_global_batch(runs, method):
    ddp, single = runs / f"ddp-{method}", runs / f"single-{method}"
    assert (ddp / "DONE").exists() and (single / "DONE").exists()
    metrics = json.loads((ddp / "metrics.json").read_text())
    assert (metrics["steps"], metrics["engine"], metrics["processes"]) == (2, "ddp", 2)
    assert json.loads((single / "metrics.json").read_text())["engine"] == "single"
    a, b = _adapter(ddp), _adapter(single)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == torch.float64, key  # the runs were float64 (see the module docstring)
        torch.testing.assert_close(a[key], b[key], rtol=1e-8, atol=1e-10, msg=lambda m, k=key: f"{method} {k}: {m}")
    # the run moved: LoRA B started at 0
    assert any(a[k].abs().max() > 1e-4 for k in a if "lora_B" in k)
    # loss, and the norm of the (all-reduced) gradient before clipping: Adam's first steps hide
    # gradient scale, these do not
    for key, rtol in (("loss", LOSS_RTOL), ("grad_norm", 1e-8)):
        assert len(_logged(ddp, key)) == 2
        assert _logged(ddp, key) == pytest.approx(_logged(single, key), rel=rtol), key


@pytest.mark.parametrize("method", SMOKE)
def test_every_method_runs_under_ddp(runs, method):
    run = runs / f"ddp-{method}"
    assert (run / "DONE").exists() and (run / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2


def test_processes_without_a_shared_group_are_refused(tmp_path):
    """`accelerate launch --multi_gpu` on a machine without GPUs and without ACCELERATE_USE_CPU:
    accelerate runs every process alone (each would train on all the data), so clinic refuses."""
    data = _rows(tmp_path / "good.jsonl", "good")
    out = tmp_path / "out"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "clinic.cli",
              *_argv("sft", data, data), *COMMON, "--output", str(out)]
    code, log = _launch(launch, tmp_path / "launch.log", lambda: None, cpu=False)
    assert code != 0
    errors = [line for line in log.splitlines() if line.startswith("clinic: error:")]
    assert errors and all("launched as 2 processes, but accelerate runs each one alone" in e for e in errors), log[-3000:]
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_one_run_directory_is_written_by_the_main_process(runs):
    leftovers = [p.name for p in runs.iterdir() if ".partial-" in p.name]  # no staging folder left
    assert leftovers == []
    assert sorted(p.name for p in (runs / "ddp-sft").iterdir()) == sorted(
        p.name for p in (runs / "single-sft").iterdir())


# --------------------------------------------------------------------------------------------
# engines


def _state(kind: str, processes: int = 2, zero_stage: int | None = None):
    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=DistributedType[kind], num_processes=processes,
                           deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage))


@pytest.mark.parametrize("state,engine", [
    (_state("NO", 1), "single"),
    (_state("MULTI_GPU"), "ddp"),
    (_state("MULTI_CPU"), "ddp"),
    (_state("FSDP"), "fsdp"),
    (_state("DEEPSPEED", zero_stage=2), "zero2"),
    (_state("DEEPSPEED", 1, zero_stage=3), "zero3"),
])
def test_engine_from_accelerate_state(state, engine):
    assert detect_engine(state) == engine


@pytest.mark.parametrize("env,engine", [
    ({}, "single"),
    ({"WORLD_SIZE": "8"}, "ddp"),
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_FSDP": "true"}, "fsdp"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "zero2"),
])
def test_engine_from_launcher_environment(monkeypatch, env, engine):
    for name in ("WORLD_SIZE", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
                 "ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert detect_engine() == engine


def test_every_method_declares_its_engines():
    from clinic.methods.registry import METHODS, methods_for

    methods_for("align")
    table = {name: spec.engines for name, spec in METHODS.items()}
    assert table["sft"] == ("ddp", "fsdp", "zero0", "zero1", "zero2", "zero3")
    assert table["tvaccine"] == table["surgery"] == ("ddp",)
    for name in ("vaccine", "booster", "tar-lite", "repnoise", "lisa"):
        assert table[name] == ("ddp", "zero0", "zero1", "zero2")
    assert check_engine("sft", table["sft"], "zero3") == "zero3"
    assert check_engine("tvaccine", table["tvaccine"], "single") == "single"
    with pytest.raises(ClinicError, match="cannot run under FSDP"):
        check_engine("vaccine", table["vaccine"], "fsdp")
    with pytest.raises(ClinicError, match="'surgery' cannot run under DeepSpeed ZeRO-2.*second backward"):
        check_engine("surgery", table["surgery"], "zero2")


def test_unsupported_engine_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    code = main(["align", "--model", "tiny-random-llama", "--method", "vaccine", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "method 'vaccine' cannot run under DeepSpeed ZeRO-3" in err
    assert list(tmp_path.iterdir()) == []


# what the engines admit today, at least (a new method may add itself; none may drop out silently)
AT_LEAST = {"ddp": {"sft", "vaccine", "tvaccine", "booster", "tar-lite", "repnoise", "surgery", "lisa"},
            "fsdp": {"sft"}, "zero2": {"sft", "vaccine", "booster", "tar-lite", "repnoise", "lisa"}}


@pytest.mark.parametrize("config,engine", [("ddp-2gpu", "ddp"), ("ddp-8gpu", "ddp"), ("fsdp-8gpu", "fsdp"),
                                           ("deepspeed-zero2", "zero2")])
def test_accelerate_configs_and_the_engine_their_processes_see(monkeypatch, config, engine):
    """Each configs/accelerate file parses as `accelerate launch` parses it, and the environment it
    gives the processes is detected as the right engine, which admits exactly the methods that
    declare it (``register_method(..., engines=...)``): a method added by docs/contributing.md's
    recipe is expected where it says it runs."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    from clinic.methods.registry import METHODS, methods_for

    path = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / f"{config}.yaml"
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "clinic.cli", "align"])
    args, _, _ = _validate_launch_command(args)
    assert args.num_processes == (2 if config == "ddp-2gpu" else 8)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ""
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    for name, value in {**env, "WORLD_SIZE": str(args.num_processes)}.items():
        monkeypatch.setenv(name, value)
    assert detect_engine() == engine
    methods_for("align")
    admitted = set()
    for name, spec in METHODS.items():
        try:
            check_engine(name, spec.engines)
            admitted.add(name)
        except ClinicError:
            pass
    declared = {name for name, spec in METHODS.items() if engine in spec.engines}
    assert admitted == declared and AT_LEAST[engine] <= declared
