"""Faithfulness A/B, the reference half: the released ApiQ code's training of one block, in PyTorch.

Reads what `apiq2gguf trace-block MODEL DIR` wrote (DIR/block.safetensors: the block's seven
weights in GGUF order, its norms, the calibration inputs x and FP targets, each linear's initial
LoRA A; DIR/config.json: shapes and the recipe), trains the block as the released code does
(OmniQuant LWC + PEFT LoRA on the seven linears, HF Llama eager attention, MSE + aug MSE, AdamW
with two parameter groups, batch 1, fixed order) from the same γ = β = 4, B = 0 and A, and writes
DIR/torch-MODE.json: every step's loss and the final block-output MSE (block cast to fp16 and
requantized in fp16, LoRA included, as the released code's step 6-7).

Modes: `released` (what the released code runs: fp16 activation caches, fp16 autocast and a
GradScaler) and `fp32` (everything f32: our f32 path's arithmetic).

usage: python3 ab_torch_step.py DIR MODE
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from bench_torch_step import RoundSTE

LINEARS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


class QLinear(torch.nn.Module):
    """OmniQuant's UniformAffineQuantizer(lwc=True) over a frozen weight, plus a PEFT LoRA."""

    def __init__(self, w, a, bits, group, symmetric, alpha):
        super().__init__()
        self.register_buffer("w", w)
        n = w.numel() // group
        self.group, self.bits, self.symmetric = group, bits, symmetric
        self.upbound_factor = torch.nn.Parameter(torch.full((n, 1), 4.0, device=w.device))
        self.lowbound_factor = torch.nn.Parameter(torch.full((n, 1), 4.0, device=w.device))
        self.lora_a = torch.nn.Parameter(a.clone()) if a is not None else None
        self.lora_b = torch.nn.Parameter(torch.zeros(w.shape[0], a.shape[0], device=w.device)) if a is not None else None
        self.scaling = alpha / a.shape[0] if a is not None else 0.0
        self.final = None

    def fake_quant(self):
        x = self.w.reshape(-1, self.group)
        xmax = torch.sigmoid(self.upbound_factor) * x.amax(1, keepdim=True)
        xmin = torch.sigmoid(self.lowbound_factor) * x.amin(1, keepdim=True)
        if self.symmetric:
            absmax = torch.max(xmax.abs(), xmin.abs())
            zs = 2 ** (self.bits - 1) - 1
            s = (absmax / zs).clamp(min=1e-5, max=1e4)
            z = torch.full_like(s, zs)
        else:
            s = ((xmax - xmin) / (2**self.bits - 1)).clamp(min=1e-5, max=1e4)
            z = (-xmin / s).clamp(min=-1e4, max=1e4).round()
        q = (RoundSTE.apply(x / s) + z).clamp(0, 2**self.bits - 1)
        return ((q - z) * s).reshape(self.w.shape)

    def forward(self, x):
        y = F.linear(x, self.fake_quant() if self.final is None else self.final)
        if self.lora_a is not None:
            y = y + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling
        return y


class RMSNorm(torch.nn.Module):
    """transformers' LlamaRMSNorm: the statistics in f32, the result in the input's type."""

    def __init__(self, w, eps):
        super().__init__()
        self.register_buffer("weight", w)
        self.eps = eps

    def forward(self, h):
        dtype = h.dtype
        h = h.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_tables(cfg, seq, dev):
    hd = cfg["head_dim"]
    theta = cfg["rope_base"] ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    if cfg.get("rope_factors"):
        theta = theta / torch.tensor(cfg["rope_factors"], dtype=torch.float64)
    ang = torch.arange(seq, dtype=torch.float64)[:, None] * theta[None]
    return ang.cos().float().to(dev), ang.sin().float().to(dev)


def rope(x, cos, sin, kind):
    """Weights are in GGUF order: llama rotates adjacent pairs, qwen2 (neox) the two halves."""
    if kind == "Norm":
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2).to(x.dtype)
    h = x.shape[-1] // 2
    x0, x1 = x[..., :h], x[..., h:]
    return torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).to(x.dtype)


class Block(torch.nn.Module):
    """transformers' LlamaDecoderLayer with eager attention (ApiQ's default)."""

    def __init__(self, t, cfg):
        super().__init__()
        r = cfg["recipe"]
        q = r["quant"]
        lora = r.get("lora")
        alpha = lora["alpha"] if lora else 0.0
        self.lin = torch.nn.ModuleList(
            QLinear(t[f"{n}.weight"], t.get(f"{n}.lora_a"), q["bits"], q["group_size"], q["symmetric"], alpha)
            for n in LINEARS
        )
        self.n1 = RMSNorm(t["attn_norm.weight"], cfg["rms_eps"])
        self.n2 = RMSNorm(t["ffn_norm.weight"], cfg["rms_eps"])
        self.cfg = cfg
        self.cos, self.sin = rope_tables(cfg, cfg["seqlen"], t["x"].device)

    def forward(self, x):
        c = self.cfg
        b, l, e = x.shape
        nh, nkv, hd = c["n_head"], c["n_head_kv"], c["head_dim"]
        residual = x
        h = self.n1(x)
        q = self.lin[0](h).view(b, l, nh, hd).transpose(1, 2)
        k = self.lin[1](h).view(b, l, nkv, hd).transpose(1, 2)
        v = self.lin[2](h).view(b, l, nkv, hd).transpose(1, 2)
        q, k = rope(q, self.cos[:l], self.sin[:l], c["rope"]), rope(k, self.cos[:l], self.sin[:l], c["rope"])
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        att = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(hd)
        att = att + torch.full((l, l), float("-inf"), device=x.device).triu(1)
        att = F.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, l, nh * hd)
        h = residual + self.lin[3](y)
        residual = h
        h = self.n2(h)
        return residual + self.lin[6](F.silu(self.lin[4](h)) * self.lin[5](h))


def main():
    d, mode = sys.argv[1], sys.argv[2]
    amp = mode == "released"
    cfg = json.load(open(f"{d}/config.json"))
    r = cfg["recipe"]
    dev = "cuda"
    t = {k: v.to(dev) for k, v in load_file(f"{d}/block.safetensors").items()}
    x, target = t["x"], t["target"]
    if amp:
        # The released code keeps its activation caches in fp16.
        x, target = x.half(), target.half()
    blk = Block(t, cfg).to(dev).float()
    lwc = [p for m in blk.lin for p in (m.upbound_factor, m.lowbound_factor)]
    lora = [p for m in blk.lin if m.lora_a is not None for p in (m.lora_a, m.lora_b)]
    groups = [{"params": lwc, "lr": r["lwc_lr"], "weight_decay": r["lwc_wd"]}]
    if lora:
        groups.append({"params": lora, "lr": r["lora_lr"], "weight_decay": r["lora_wd"]})
    opt = torch.optim.AdamW(groups)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    losses = []
    torch.cuda.synchronize()
    t0 = time.time()
    for epoch in range(r["epochs"]):
        for j in range(x.shape[0]):
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                out = blk(x[j : j + 1])
                loss = F.mse_loss(out, target[j : j + 1])
                if r["aug_loss"]:
                    # q_in == fp_in for this block, so the aug target is the same tensor
                    loss = loss + F.mse_loss(out, target[j : j + 1])
            losses.append(loss.item())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    torch.cuda.synchronize()
    seconds = time.time() - t0
    # Steps 6-7 of the released code: block to fp16, weights requantized in fp16, then the
    # quantized block (LoRA included) under autocast.
    with torch.no_grad():
        blk.half()
        for m in blk.lin:
            m.final = m.fake_quant()
        total = 0.0
        for j in range(x.shape[0]):
            with torch.autocast("cuda", dtype=torch.float16, enabled=True):
                out = blk(x[j : j + 1].half())
            total += F.mse_loss(out.float(), t["target"][j : j + 1].float()).item()
    res = {"implementation": "torch", "mode": mode, "losses": losses, "mse_final": total / x.shape[0], "train_seconds": seconds}
    json.dump(res, open(f"{d}/torch-{mode}.json", "w"))
    print(f"torch {mode}: {len(losses)} steps in {seconds:.1f} s, loss {losses[0]:.4e} -> {losses[-1]:.4e}, block-output mse {res['mse_final']:.4e}")


if __name__ == "__main__":
    main()
