"""How a step runs, per backend: the variants and their defaults (framework-free).

torch: as written (eager), captured whole in one CUDA graph and replayed (cudagraph: no
per-kernel launch cost; CUDA devices only), through torch.compile (eval only: AOTAutograd cannot
differentiate twice, and every train step here does), or eagerly with the k = 1 hollow_forward
transformer in fused Triton kernels (triton). JAX: jit, or jit with that transformer in one
fused Pallas kernel (pallas).
"""

from __future__ import annotations

VARIANTS = {"torch": ("eager", "cudagraph", "compile", "triton"), "jax": ("jit", "pallas")}
# Variants whose one change is tau's value and tangent in a fused kernel: they apply to
# hollow_forward at k = 1 only, on a GPU (their interpreters are for tests).
FUSED_VARIANTS = ("triton", "pallas")
# The variant each fused one runs as, kernel aside: its Hutchinson-1 twin in goal (a).
FUSED_BASE = {"triton": "eager", "pallas": "jit"}
DEFAULT_VARIANT = {name: variants[0] for name, variants in VARIANTS.items()}
