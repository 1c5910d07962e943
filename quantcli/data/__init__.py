"""Package data: the evaluation text shipped for `eval` / `convert --verify`."""
