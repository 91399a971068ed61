"""The model lifecycle: versions in a registry, generations (a version + the collection built with it), the train
and activate jobs, the shadow build, the quality gate and the hot swap."""
