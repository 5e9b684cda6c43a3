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
"""

from dlmjax.model import attention

attention.register('pallas', 'dlmjax.kernels.pallas_gpu:attend', platforms=('gpu',),
                   auto_rank=0)
attention.register('cudnn', 'dlmjax.kernels.cudnn_gpu:attend', platforms=('gpu',),
                   auto_rank=1)
attention.register('triton', 'dlmjax.kernels.triton_gpu:attend', platforms=('gpu',),
                   auto_rank=2)
attention.register('splash', 'dlmjax.kernels.splash_tpu:attend', platforms=('tpu',),
                   auto_rank=0)
