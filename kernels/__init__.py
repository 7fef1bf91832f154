"""Triton kernels for ZoomR (resident-set index building, thought scoring), each beside its pure-torch reference."""
