"""The curve-tracing toy of the recurrence engine: the task, model and training (:mod:`.task`)
and its pictures and summary (:mod:`.report`)."""
