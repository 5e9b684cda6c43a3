"""Accelerator attention kernels (Pallas GPU flash attention, Splash on TPU, jax-triton).

None yet: each kernel registers itself as a backend in `dlmjax/model/attention.py`
(`model.attention=...`) and is tested against the `xla` reference in Pallas interpret mode.
"""
