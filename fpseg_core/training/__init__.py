"""Training toolchain: precompute embeddings, prompt tuning / transfer, encoder distillation (see the CLI)."""
