"""Built-in EMA rules (the ``ema`` plugin kind; config ``ema:``, shorthand ``train.ema_decay`` / ``ema_warmup``)."""
