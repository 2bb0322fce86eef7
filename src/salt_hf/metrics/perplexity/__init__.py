"""The `perplexity` evaluate module; load it by path with `salt_hf.metrics.load_metric`."""
