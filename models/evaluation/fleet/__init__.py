"""``roadseg fleet eval``: a model evaluated over many recorded drives on Ray, with ``roadseg eval``'s
numbers (:mod:`.drives` specs and manifests, :mod:`.worker` decoding and the model actor, :mod:`.ray_job`
the Ray Data pipeline, :mod:`.aggregate` the sums, :mod:`.report` the results folder, :mod:`.cli`)."""
