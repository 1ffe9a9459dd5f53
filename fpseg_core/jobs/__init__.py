"""What every long-running command shares: configuration plumbing (dataclass defaults < YAML < --set < flags)
and the distributed context (torchrun). Used by data/precompute, training and evaluation alike."""
