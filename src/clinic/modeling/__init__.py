"""Model-level machinery below the methods: loading models and adapters (:mod:`.models`,
:mod:`.chain`), the LoRA and training settings (:mod:`.lora`, :mod:`.training`), SFT data
handling on TRL (:mod:`.sft`), per-sample gradients and the gradient workspace curation and repair
share (:mod:`.gradients`, :mod:`.workspace`), the sentence encoder (:mod:`.encoder`), forward
hooks on decoder layers and attention modules (:mod:`.hooks`), the exact sink attention
(:mod:`.attention`), the model inside an engine wrapper plus the collectives the methods use
(:mod:`.parallel`), and where stages compute (:mod:`.device`). Nothing here knows a method, a
stage or the CLI."""
