"""One ApiQ-bw training step in PyTorch, the reference for `apiq2gguf bench-step`.

Same recipe as the released ApiQ code (OmniQuant LWC quantizer with round-STE, LoRA r64 alpha 16
on the seven linears, block forward, MSE + aug MSE, AdamW with two parameter groups), on a
random block of a named shape. Modes: fp32 (what apiq2gguf computes) and amp (ApiQ's own:
fp16 autocast + GradScaler). Prints ms/step (median of CUDA-event timings) and tokens/s.

usage: python3 bench_torch_step.py SHAPE SEQLEN MODE [STEPS]
"""
import math
import sys

import torch
import torch.nn.functional as F

SHAPES = {"stories260k": (64, 172, 8, 4), "smollm2-135m": (576, 1536, 9, 3), "llama2-7b": (4096, 11008, 32, 32)}


class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


class QLinear(torch.nn.Module):
    """OmniQuant UniformAffineQuantizer(lwc=True), asymmetric 2-bit g64, plus LoRA."""

    def __init__(self, out_f, in_f, bits=2, group=64, r=64, alpha=16):
        super().__init__()
        self.register_buffer("w", torch.randn(out_f, in_f) / math.sqrt(in_f))
        n = out_f * in_f // group
        self.group, self.qmax = group, 2**bits - 1
        self.up = torch.nn.Parameter(torch.full((n, 1), 4.0))
        self.low = torch.nn.Parameter(torch.full((n, 1), 4.0))
        self.a = torch.nn.Parameter(torch.empty(r, in_f).uniform_(-1 / math.sqrt(in_f), 1 / math.sqrt(in_f)))
        self.b = torch.nn.Parameter(torch.zeros(out_f, r))
        self.scaling = alpha / r

    def fake_quant(self):
        x = self.w.reshape(-1, self.group)
        xmax = torch.sigmoid(self.up) * x.amax(1, keepdim=True)
        xmin = torch.sigmoid(self.low) * x.amin(1, keepdim=True)
        s = ((xmax - xmin) / self.qmax).clamp(min=1e-5, max=1e4)
        z = (-xmin / s).clamp(min=-1e4, max=1e4).round()
        q = (RoundSTE.apply(x / s) + z).clamp(0, self.qmax)
        return ((q - z) * s).reshape(self.w.shape)

    def forward(self, x):
        return F.linear(x, self.fake_quant()) + self.scaling * F.linear(F.linear(x, self.a), self.b)


def rope(x, cos, sin):
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)


class Block(torch.nn.Module):
    def __init__(self, e, ff, nh, nkv, seq):
        super().__init__()
        hd = e // nh
        self.e, self.nh, self.nkv, self.hd = e, nh, nkv, hd
        self.q, self.k, self.v, self.o = QLinear(e, e), QLinear(nkv * hd, e), QLinear(nkv * hd, e), QLinear(e, e)
        self.gate, self.up, self.down = QLinear(ff, e), QLinear(ff, e), QLinear(e, ff)
        self.n1, self.n2 = torch.nn.Parameter(torch.ones(e), requires_grad=False), torch.nn.Parameter(torch.ones(e), requires_grad=False)
        theta = 10000.0 ** (-torch.arange(0, hd, 2).float() / hd)
        ang = torch.arange(seq).float()[:, None] * theta[None]
        self.register_buffer("cos", ang.cos())
        self.register_buffer("sin", ang.sin())

    def norm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def forward(self, x):
        b, l, _ = x.shape
        h = self.norm(x, self.n1)
        q = self.q(h).view(b, l, self.nh, self.hd).transpose(1, 2)
        k = self.k(h).view(b, l, self.nkv, self.hd).transpose(1, 2)
        v = self.v(h).view(b, l, self.nkv, self.hd).transpose(1, 2)
        q, k = rope(q, self.cos, self.sin), rope(k, self.cos, self.sin)
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        # Eager attention, as ApiQ's default (--attn_implementation eager).
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        att = att.masked_fill(torch.ones(l, l, device=x.device, dtype=torch.bool).triu(1), float("-inf"))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, l, self.e)
        x = x + self.o(y)
        h = self.norm(x, self.n2)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def main():
    shape, seq, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    torch.manual_seed(0)
    dev = "cuda"
    blk = Block(*SHAPES[shape], seq).to(dev)
    lwc = [p for n, p in blk.named_parameters() if n.endswith(".up") or n.endswith(".low")]
    lora = [p for n, p in blk.named_parameters() if n.endswith(".a") or n.endswith(".b")]
    opt = torch.optim.AdamW([{"params": lwc, "lr": 5e-3, "weight_decay": 0.1}, {"params": lora, "lr": 5e-4, "weight_decay": 0.1}])
    scaler = torch.amp.GradScaler("cuda", enabled=mode == "amp")
    x, t1, t2 = (torch.randn(1, seq, SHAPES[shape][0], device=dev) for _ in range(3))

    def step():
        with torch.autocast("cuda", dtype=torch.float16, enabled=mode == "amp"):
            y = blk(x)
            loss = F.mse_loss(y.float(), t1) + F.mse_loss(y.float(), t2)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        step()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    ms = sorted(times)[len(times) // 2]
    print(f"torch {mode} {shape} seq {seq}: {ms:.2f} ms/step, {seq / ms * 1e3:.0f} tokens/s, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
