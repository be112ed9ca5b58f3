"""The training path: ``dtr train`` (:mod:`.train`), the step loop (:mod:`.trainer`), accumulation, trackers fan-out."""
