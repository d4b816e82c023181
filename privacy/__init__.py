"""Privacy of adapter deltas: clipping, noise, accounting, secure aggregation and adapter
signing. Never imports torch at module level."""
