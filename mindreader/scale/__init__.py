"""What the workflow's heavy rules cost at a config's shapes: one unit of each rule's work measured
(`mindreader.scale.units`), and every job of the workflow priced from those units next to what
it asks the scheduler for (`mindreader.scale.project`). Used by rule preflight
(`mindreader.preflight`) and by bench/paper_scale.py."""
