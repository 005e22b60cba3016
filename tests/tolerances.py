"""Tolerances of the tests that compare today's outputs with outputs recorded on another machine.

A recorded float32 output and today's float32 output are two roundings of the same exact value,
each by a different machine: thread counts split reductions differently, and ATen's kernels
(``ATEN_CPU_CAPABILITY=default|avx2|avx512``), BLAS and the vectorised ``sin``/``cos``/``exp``
differ between vector units. If each machine's float32 result lies within ``E`` of the exact
value, the two differ by at most ``2 * E``. ``E`` is measured against a float64 recomputation of
the same model and inputs (``tests/data/measure_float32_error.py``), over 1, 2 and 4 threads and
the three CPU capabilities, each in a fresh process, and each tolerance is
``atol = 2 * 4 * E`` (rounded up): two roundings, times a margin of 4 for kernel paths that were not
measured. :func:`assert_float32_error_within` checks on the running machine the premise of that
argument, ``|float32 - float64| <= atol / 2``, so a machine whose kernels round worse than
assumed fails there, with this basis named, rather than in a comparison with a recorded file.

Comparisons between two computations on the same machine that should agree exactly (or to a
documented bound of their own) do not use these tolerances.
"""

from __future__ import annotations

import torch

NWM_TINY_ATOL = 1e-5
"""Outputs of the NWM reference CDiT, ``tests/data/nwm_cdit_tiny_io.safetensors`` (``out_ema``,
``out_model``; ``max |out|`` 1.4). Measured ``E`` (torch 2.14.1, x86-64 with AVX-512): at most
3.5e-7 over the nine thread/capability paths, 3.3e-7 for the recorded outputs; the largest
difference of a path from the recorded outputs is 2.4e-7. ``2 * 4 * E`` = 2.8e-6, rounded up to
1e-5 (about 60 float32 epsilons of ``max |out|``)."""

HYBRID_0_1_0_ATOL = 2.5e-4
"""Outputs of the 0.1.0.dev0 HybridCDiT fixture, ``tests/data/hybrid_0_1_0_io.safetensors``
(``out_memory``, ``out_plain``; ``max |out|`` 5.6, every parameter perturbed by 0.2 so
activations are large; timesteps up to 1000 also enter ``cos(t * freq)`` with float32 arguments,
whose rounding grows with ``t``). Measured ``E``: 2.9e-5 on each of the nine paths, 2.95e-5 for the
recorded outputs; the largest difference of a path from the recorded outputs is 3.8e-5.
``2 * 4 * E`` = 2.4e-4, rounded up to 2.5e-4 (about 380 float32 epsilons of ``max |out|``;
an option that changed the function, such as a non-zero new embedding, moves it by 1e-3 or
more)."""


def assert_close_to_recorded(actual: torch.Tensor, recorded: torch.Tensor, atol: float) -> None:
    """``actual`` (computed here) equals ``recorded`` (computed elsewhere) within ``atol``, one of
    the constants above; ``rtol`` is 0 because ``atol`` already scales with ``max |out|``."""
    torch.testing.assert_close(actual, recorded, atol=atol, rtol=0)


def assert_float32_error_within(
    float32: torch.Tensor, float64: torch.Tensor, atol: float, what: str
) -> None:
    """The premise of ``atol`` on this machine: the float32 output ``float32`` lies within
    ``atol / 2`` of its float64 recomputation ``float64``."""
    error = float((float32.double() - float64).abs().max())
    assert error <= atol / 2, (
        f"{what}: float32 differs from float64 by {error:.3g} on this machine, over half the "
        f"tolerance {atol:g} of comparisons with recorded outputs (basis: tests/tolerances.py)"
    )
