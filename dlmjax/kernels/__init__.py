"""Accelerator attention kernels, registered as backends of `dlmjax/model/attention.py`.

| backend  | module          | runs on | what |
|----------|-----------------|---------|------|
| `pallas` | `pallas_gpu`    | GPU     | Pallas (Triton lowering) flash attention, fwd + bwd |
| `cudnn`  | `cudnn_gpu`     | GPU     | cuDNN fused attention via `jax.nn.dot_product_attention` |
| `triton` | `triton_gpu`    | GPU     | Triton flash attention via jax-triton (the `[gpu]` extra) |
| `splash` | `splash_tpu`    | TPU     | Splash attention, shard_map over batch and heads |

Each module is imported only when its backend is first used (the registry holds
'module:function' paths), so a CPU install never imports triton. The Pallas kernels also run on
a CPU in interpret mode, which is how tests/test_kernels_*.py check them against `xla`.
`auto` tries them in the order given here (`auto_rank`) and keeps the first that passes its
check; the order is a default until the GPU bench has measured them (docs/benchmarks.md).

This package is a leaf: it holds the table below and imports nothing, so the model (which
registers the table's backends when `dlmjax/model/attention.py` loads) and the config (which
checks `model.attention` against `NAMES`) read it without an import cycle. The kernel
modules themselves load only when a backend is first used.
"""

# (name, 'module:function', platforms, auto rank)
KERNELS = (
    ('pallas', 'dlmjax.kernels.pallas_gpu:attend', ('gpu',), 0),
    ('cudnn', 'dlmjax.kernels.cudnn_gpu:attend', ('gpu',), 1),
    ('triton', 'dlmjax.kernels.triton_gpu:attend', ('gpu',), 2),
    ('splash', 'dlmjax.kernels.splash_tpu:attend', ('tpu',), 0),
)
NAMES = tuple(name for name, *_ in KERNELS)
