"""The sequence encoder: a transformer over visits trained with "same user" as similarity.

``tokens`` (stable ids, time features) -> ``model`` (the network) -> ``train`` (losses, batches,
the fit loop) -> ``driver`` (collect, prepare, fit here or through TorchDistributor) ->
``registry`` (versioned model folders) -> ``apply`` (the pandas UDF that embeds sessions).
"""
