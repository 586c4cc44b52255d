"""Learning on the device: heads, the sample store, the state directory, the learner, class
limits and prediction smoothing."""
