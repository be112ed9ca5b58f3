"""Run directories: their owner (:mod:`.rundir`), checkpoint retention and ``dtr runs``."""
