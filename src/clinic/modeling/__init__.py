"""Model-level machinery below the methods: forward hooks on decoder layers and attention modules
(:mod:`.hooks`), the exact sink attention (:mod:`.attention`), and the model inside an engine
wrapper plus the collectives the methods use (:mod:`.parallel`). Nothing here knows a method,
a stage or the CLI."""
