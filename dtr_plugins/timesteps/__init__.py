"""Built-in timestep-sampler rules (the ``timestep_sampler`` plugin kind; config ``timesteps:``)."""
