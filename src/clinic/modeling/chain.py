"""Model references: how a stage names its model (an alias, a model directory, a hub id, or a
finished run directory) and how the model is rebuilt from it (:class:`ModelChain`: a base plus
the adapters merged in order, docs/reference/algorithms.md §6.4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ClinicError
from .models import load_model, merge_adapter
from ..rundir import DONE, RUN_RECORD, followed_path, is_incomplete_run, is_run_dir, read_run

@dataclass
class ModelChain:
    """How to rebuild a model: a base (alias, path or hub id) plus adapters merged in order."""

    base: str
    adapters: list[str] = field(default_factory=list)
    prompt_format: dict | None = None  # the format the last training stage used


TRAINED_STAGES = ("align", "finetune", "repair")  # the run directories that hold a model


def resolve_ref(ref: str, train: bool = False) -> ModelChain:
    """A model name/path, or a finished run directory, as a :class:`ModelChain`.

    A run's ``run.json`` stores the paths inside the run relative to it; every adapter it lists
    must be the ``adapter`` of a finished clinic run, or the chain is refused (a hand-edited or
    foreign record must not make clinic load files from anywhere). ``train``: the model is
    trained on, so an evaluation run (a record of a measurement, not a model) is refused."""
    if not str(ref).strip():
        raise ClinicError("the model is empty; name an alias, a model directory, a hub id or a run directory")
    path = Path(ref).expanduser()
    if is_incomplete_run(path):
        raise ClinicError(f"{path} is an incomplete clinic run (its stage did not finish; no DONE marker): "
                          f"run that stage again")
    if not is_run_dir(path):
        if (path / "adapter_config.json").is_file() and not (path / "config.json").exists():
            return _peft_adapter(path)
        # a local model path is recorded absolute: later stages may run from another folder
        return ModelChain(str(path.resolve()) if path.exists() else ref)
    record = read_run(path)
    if train and record.get("stage") not in TRAINED_STAGES:
        raise ClinicError(f"{path} is the run of the {record.get('stage')} stage, not a model; pass the model or the "
                          f"align/finetune run it measured")
    try:
        chain = record["model_chain"]
        base, adapters = str(chain["base"]), [str(a) for a in chain["adapters"]]
    except (KeyError, TypeError):
        raise ClinicError(f"{path / 'run.json'} has no valid model_chain (not written by this clinic?)") from None
    local_base = followed_path(path, base)
    if not Path(base).is_absolute() and local_base.exists():
        base = str(local_base.resolve())
    return ModelChain(base, follow_adapters(path, adapters, path / RUN_RECORD), record.get("prompt_format"))


def _peft_adapter(path: Path) -> ModelChain:
    """A PEFT LoRA adapter folder that clinic did not write, given as the model: its base (the
    adapter config's ``base_model_name_or_path``: an alias, a local folder or a hub id) plus it.
    Only a folder named directly is taken; adapters listed in a run's record must still be
    clinic's own (:func:`follow_adapters`)."""
    import json

    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ClinicError(f"{path / 'adapter_config.json'} cannot be read: {exc}") from None
    base = config.get("base_model_name_or_path")
    if config.get("peft_type") != "LORA" or not base:
        hint = (f"pass the run directory {path.parent}" if is_run_dir(path.parent) else
                "its adapter_config.json must name peft_type LORA and its base_model_name_or_path")
        raise ClinicError(f"{path} is a LoRA adapter, not a model, and names no base to load it on: {hint}")
    local = (path / base) if not Path(base).is_absolute() and (path / base).exists() else Path(base).expanduser()
    return ModelChain(str(local.resolve()) if local.exists() else str(base), [str(path.resolve())])


def follow_adapters(run_dir: Path, adapters: list[str], record: Path) -> list[str]:
    """The adapters ``record`` (a file of ``run_dir``) lists, as absolute paths; each must be the
    ``adapter`` folder of a finished clinic run, or the chain is refused."""
    followed = []
    for stored in adapters:
        adapter = followed_path(run_dir, str(stored)).resolve()
        run = adapter.parent
        if adapter.name != "adapter" or not ((run / DONE).is_file() and (run / RUN_RECORD).is_file()):
            raise ClinicError(f"{record} lists the adapter {stored}, which is not the adapter of a finished "
                              f"clinic run; refusing to follow it")
        followed.append(str(adapter))
    return followed


def chain_inputs(ref: str, chain: ModelChain) -> tuple[Path, ...]:
    """The folders a stage reads its model from (an output must not replace any of them)."""
    folders = [Path(a).parent for a in chain.adapters]
    if Path(ref).expanduser().exists():
        folders.append(Path(ref).expanduser())
    if Path(chain.base).exists():
        folders.append(Path(chain.base))
    return tuple(folders)


def check_chain(chain: ModelChain) -> None:
    """Fail early (before any output is written) on a model that cannot be found."""
    from .models import resolve_model_path

    if chain.base.startswith("tiny-random-"):
        from .models import TINY_ARCHS

        arch = chain.base.removeprefix("tiny-random-")
        if arch not in TINY_ARCHS:
            raise ClinicError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}")
    else:
        resolve_model_path(chain.base)
    from .models import check_adapter_dir

    for adapter in chain.adapters:
        if not Path(adapter).is_dir():
            raise ClinicError(f"adapter {adapter} of the model chain is missing")
        check_adapter_dir(Path(adapter))


def load_chain(chain: ModelChain, dtype="float32", attn_implementation: str | None = None,
               device: str | None = None):
    """The chain's model: the base in ``dtype``, every adapter merged in order (in that dtype: a
    bf16 chain rounds each merged weight once), on ``device`` (a CUDA model larger than the GPU's
    free memory is spread over the visible GPUs instead, ``device_map="auto"``)."""
    device_map = "auto" if device and device.startswith("cuda") and not _fits(chain.base, dtype, device) else None
    model, tok = load_model(chain.base, dtype=dtype, attn_implementation=attn_implementation, device_map=device_map)
    for adapter in chain.adapters:
        model = merge_adapter(model, adapter)
    if device and device_map is None:
        model.to(device)
    return model, tok


def _fits(base: str, dtype, device: str) -> bool:
    """Whether the base model's weights (their files' size, rescaled to ``dtype``) fit in 90 % of the
    GPU's free memory; True when unknown (a tiny model, a hub id not cached)."""
    import torch

    from .models import resolve_model_path

    try:
        folder = Path(resolve_model_path(base))
    except ClinicError:
        return True
    files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return True
    stored = sum(f.stat().st_size for f in files)
    width = torch.finfo(getattr(torch, dtype) if isinstance(dtype, str) else dtype).bits // 8
    needed = stored * width / 2  # checkpoints are mostly bf16/fp16 on disk
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return needed < 0.9 * free
