"""Counting FLOPs with PyTorch's own formulas (``torch.utils.flop_counter``).

``FlopCounter`` is ``FlopCounterMode`` without its per-module breakdown: that breakdown installs
module hooks whose backward hooks break ``torch.autograd.grad(..., create_graph=True)`` (an R1
penalty, say), and the harness only needs the total. It sees every aten op, whatever Python path
(direct ``forward`` calls, traced or compiled wrappers) led there.
"""

from __future__ import annotations

from typing import Any

from torch.utils.flop_counter import FlopCounterMode

try:
    from torch.utils.flop_counter import _FlopCounterMode
except ImportError:  # pragma: no cover - older torch: fall back to the full mode
    _FlopCounterMode = None


class FlopCounter(FlopCounterMode):
    """A context manager counting the FLOPs of the matmul, convolution and attention ops run
    inside it; ``get_total_flops()`` may be read while it is active."""

    def __init__(self) -> None:
        super().__init__(display=False)

    def __enter__(self) -> FlopCounter:
        if _FlopCounterMode is None:
            return super().__enter__()
        self.flop_counts.clear()
        self.mode = _FlopCounterMode(self)
        self.mode.__enter__()
        return self

    def __exit__(self, *args: Any) -> Any:
        if _FlopCounterMode is None:
            return super().__exit__(*args)
        result = self.mode.__exit__(*args)
        self.mode = None
        return result

    def _count_flops(self, func_packet: Any, out: Any, args: Any, kwargs: Any) -> Any:
        if _FlopCounterMode is None:
            return super()._count_flops(func_packet, out, args, kwargs)
        if func_packet in self.flop_registry:
            self.flop_counts["Global"][func_packet] += self.flop_registry[func_packet](*args, **kwargs, out_val=out)
        return out
