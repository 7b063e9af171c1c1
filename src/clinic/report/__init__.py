"""Reading finished experiments: the result rows (:mod:`.results`), the adaptive attacker's
worst cases (:mod:`.adaptive`), tables and the HTML report (:mod:`.tables`), figures
(:mod:`.figures`) and the demo's table (:mod:`.demo`). Nothing here runs a stage: the report
reads plan.json and the stage folders it names (``clinic report``)."""
