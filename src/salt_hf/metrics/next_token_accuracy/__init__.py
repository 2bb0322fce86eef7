"""The `next_token_accuracy` evaluate module; load it by path with `salt_hf.metrics.load_metric`."""
