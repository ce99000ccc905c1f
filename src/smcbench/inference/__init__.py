"""Running pruned models for inference: backends (`backends`), their measurement in fresh processes with the
correctness check (`measure`, `external` for engines outside PyTorch), sizes on disk (`size`), reading the results
(`results`). `smc-bench bench inference` drives it; the report's "What the sparsity buys" reads what it wrote."""
