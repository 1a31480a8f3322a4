"""Training: tile sampling (sampler), tile reading (dataset), the fold loop (loop), DDP (ddp)."""
