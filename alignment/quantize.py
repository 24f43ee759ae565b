"""QLoRA's frozen base: the decoder's linear layers in 4-bit NormalFloat (bitsandbytes).

The LoRA adapter trains in full precision on top of them (PEFT wraps
bitsandbytes' ``Linear4bit`` like a plain ``nn.Linear``); the LM head and the
embeddings stay in the compute dtype. Each layer is quantized as it moves to
the device, so the full-precision weights never sit on a GPU all at once.
"""

from __future__ import annotations

import logging

import torch

from alignment.config import ConfigError

log = logging.getLogger(__name__)


def _bitsandbytes():
    try:
        import bitsandbytes
    except ImportError as exc:
        raise ConfigError(
            "quantization 'nf4' needs bitsandbytes: install it (pip install 'prospect[qlora]') or set "
            "quantization to 'none'"
        ) from exc
    return bitsandbytes


def quantize_base(model, *, compute_dtype: torch.dtype, device: torch.device):
    """Replace (in place) every ``nn.Linear`` of ``model`` but its LM head by an NF4 ``Linear4bit`` on
    ``device``, then move the rest of ``model`` there; returns ``model``. Call before LoRA is attached."""
    bnb = _bitsandbytes()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = before = after = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child is head:
                continue
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=compute_dtype, quant_type="nf4", device="meta")
            # On a CPU, bitsandbytes repacks the weight for its inference kernel at the first eval forward
            # (the reference pass), and that kernel has no backward: training would then get no gradient
            # through the base layers. Keep the layout whose matmul autograd differentiates.
            layer.support_avx512bf16_for_cpu = False
            layer.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data.to(compute_dtype), requires_grad=False)
            before += child.weight.numel() * child.weight.element_size()
            layer = layer.to(device)  # quantizes
            after += layer.weight.numel() * layer.weight.element_size()
            setattr(parent, name, layer)
            replaced += 1
    if not replaced:
        raise ConfigError("quantization 'nf4': this model has no nn.Linear layers to quantize")
    log.info("nf4: %d linear layers quantized, %.1f MB -> %.1f MB of weights", replaced, before / 1e6, after / 1e6)
    return model.to(device)
