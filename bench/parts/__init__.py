"""The three bench parts (loaders, kernels, train) and the shard set-up they share.

Each part module exposes ``run(args, device, shards) -> (entries, settings, notes)``:
``entries`` are the JSON rows (one per measured or deliberately unmeasured path),
``settings`` the sizes it actually used (recorded, so a number is never separated from
the shape it was taken at) and ``notes`` the caveats a reader of the table must know.
"""
