"""LoRA settings are declared once (clinic.modeling.lora.LoraFields): a scratch field added there,
and nowhere else, becomes an option of clinic align/finetune/curate, reaches the PEFT LoraConfig
of the adapter that alignment trains, that curation takes its gradients over and that repair
rewrites (through the fine-tuning's adapter), and, added with ``since`` at its default, leaves every
committed stage hash as it was. Run in a subprocess on a copy of the package with the field added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELD = '''    lora_scratch_rslora: bool = field(default=False, metadata={
        "help": "scratch: rank-stabilised scaling", "peft": "use_rslora", "since": "test"})
'''
SCRIPT = r'''
import glob, json, sys
from pathlib import Path
import clinic
assert clinic.__file__.startswith(sys.argv[1]), clinic.__file__
from clinic.cli import main
from clinic.experiment import Experiment
out = Path(sys.argv[2])
# 1. every committed plan keeps its hashes with the new field at its default
for exp_file in sorted(glob.glob(sys.argv[3] + "/*/experiment.yaml")):
    plan = json.loads(Path(exp_file).with_name("plan.json").read_text())
    assert sorted(s.dirname for s in Experiment.from_file(exp_file).plan()) == sorted(s["dir"] for s in plan["stages"]), exp_file
# 2. align: the option exists and reaches the trained adapter's config
tiny = ["--model", "tiny-random-llama", "--max-steps", "1", "--batch-size", "2", "--max-length", "256"]
assert main(["align", *tiny, "--n", "4", "--lora-scratch-rslora", "--output", str(out / "align")]) == 0
assert json.loads((out / "align/adapter/adapter_config.json").read_text())["use_rslora"] is True
# 3. finetune + repair: the repaired adapter keeps it
assert main(["finetune", *tiny, "--task", "sst2", "--n", "4", "--lora-scratch-rslora", "--output", str(out / "ft")]) == 0
assert main(["repair", "--model", str(out / "ft"), "--method", "antidote", "--n-harmful", "2", "--batch-size", "2",
             "--output", str(out / "rep")]) == 0
assert json.loads((out / "rep/adapter/adapter_config.json").read_text())["use_rslora"] is True
# 4. curate: the adapter the gradients are taken over
import clinic.modeling.models as models
seen = []
real = models.attach_lora
models.attach_lora = lambda model, settings: (seen.append(settings.to_peft().use_rslora), real(model, settings))[1]
assert main(["curate", "--model", "tiny-random-llama", "--selector", "pharmacist", "--n-candidates", "4",
             "--n-validation", "2", "--n-harmful", "2", "--projection-dim", "0", "--batch-size", "2",
             "--lora-scratch-rslora", "--output", str(out / "cur")]) == 0
assert seen == [True], seen
print("ok")
'''


def test_a_lora_field_declared_once_reaches_align_curate_and_repair(tmp_path, data_dir):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "clinic", src / "clinic", ignore=shutil.ignore_patterns("__pycache__"))
    lora = src / "clinic" / "modeling" / "lora.py"
    text = lora.read_text()
    anchor = '    def lora_targets_list(self)'
    assert anchor in text
    lora.write_text(text.replace(anchor, FIELD + "\n" + anchor, 1))
    env = {**os.environ, "PYTHONPATH": str(src), "CLINIC_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(src), str(tmp_path / "runs"), str(ROOT / "results")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-3000:] + done.stderr[-3000:]
