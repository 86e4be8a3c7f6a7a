#!/usr/bin/env python
"""A small forward + backward through every CUDA kernel of fusedrnn, for compute-sanitizer.

    compute-sanitizer --tool memcheck  --error-exitcode 1 python tools/gpu/sanitizer_case.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python tools/gpu/sanitizer_case.py

(tools/gpu/gpu_check.sh runs both, with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every
tensor is its own allocation and an access past its end is caught.) Covered: LSTM with
projection, lengths, reverse, norm clip, truncation, cell clip and the gradient record
(whole-row launches with several warps: H = 129); GRU on packed input with value clip;
bfloat16 and float16; an empty batch. Exits non-zero if a result is not finite.
"""
import sys

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import ops


def check(name, *tensors):
    for t in tensors:
        if t is not None and t.numel() and not torch.isfinite(t.float()).all():
            sys.exit(f"sanitizer_case: {name}: non-finite values")


def lstm_case(dtype, H, P, reverse, **options):
    torch.manual_seed(0)
    T, B, I = 6, 3, 5
    dev = torch.device("cuda")

    def p(*shape):
        return (torch.randn(*shape, device=dev) / H ** 0.5).to(dtype).requires_grad_()

    x, w_ih, w_hh = p(T, B, I), p(4 * H, I), p(4 * H, P or H)
    b_ih, b_hh, h0, c0 = p(4 * H), p(4 * H), p(B, P or H), p(B, H)
    w_hr = p(P, H) if P else None
    record = ops.new_grad_record(T, device=dev)
    y, h, c = ops.lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, weight_hr=w_hr,
                             lengths=[6, 2, 4], reverse=reverse, grad_record=record, **options)
    (y.float().square().sum() + h.float().sum() + c.float().sum()).backward()
    check(f"lstm {dtype}", y, h, c, x.grad, w_ih.grad, w_hh.grad, b_ih.grad, h0.grad, c0.grad,
          record.grad)


def gru_packed_case(dtype):
    torch.manual_seed(1)
    dev = torch.device("cuda")
    model = fusedrnn.GRU(7, 33, num_layers=2, bidirectional=True, grad_clip=0.05, truncate=3,
                         track_grad_norms=True, device=dev, dtype=dtype)
    x = torch.randn(8, 4, 7, device=dev, dtype=dtype, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor([8, 3, 5, 1]), enforce_sorted=False)
    out, h = model(packed)
    (out.data.float().square().sum() + h.float().sum()).backward()
    check(f"gru {dtype}", out.data, h, x.grad, model.grad_norms)


def empty_batch_case():
    dev = torch.device("cuda")
    model = fusedrnn.LSTM(3, 4, device=dev)
    x = torch.randn(5, 0, 3, device=dev, requires_grad=True)
    out, (h, c) = model(x)
    (out.sum() + h.sum() + c.sum()).backward()


def main():
    if not torch.cuda.is_available() or not fusedrnn._C.cuda_built:
        sys.exit("sanitizer_case: needs a GPU and fusedrnn built with CUDA")
    lstm_case(torch.float32, H=129, P=0, reverse=True, grad_clip=0.1, grad_clip_mode="norm",
              truncate=2, cell_clip=0.5)
    lstm_case(torch.float32, H=40, P=17, reverse=False, grad_clip=0.05, truncate=3)
    lstm_case(torch.bfloat16, H=129, P=0, reverse=False, grad_clip=0.1, grad_clip_mode="norm")
    lstm_case(torch.float16, H=16, P=8, reverse=True, grad_clip=0.1, grad_clip_mode="norm")
    gru_packed_case(torch.float32)
    gru_packed_case(torch.float16)
    empty_batch_case()
    torch.cuda.synchronize()
    print("sanitizer_case: ok")


if __name__ == "__main__":
    main()
