"""Benchmarks beside PyTorch: bench_torch (criterion's work in PyTorch), fid_compare (pytorch-fid)."""
