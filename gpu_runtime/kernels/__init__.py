"""Attention kernels over the paged KV cache: a Triton decode kernel and its torch reference."""
