"""The PyTorch peer of `cargo bench --bench step_time`: the same DiT (DiT's reference models.py architecture, written
out without timm), batch, optimizer (AdamW, grad-norm clip 1) and EMA, timed the same way (1 warm-up step, then 10).

Run by benches/peer.sh, which installs PyTorch from PyPI into a private virtual environment and pins both sides to
the same thread count. Prints one JSON line per preset.
"""
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        x = attn.softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden, freq=256):
        super().__init__()
        self.freq = freq
        self.mlp = nn.Sequential(nn.Linear(freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        half = self.freq // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class DiTBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c):
        sm, scm, gm, sf, scf, gf = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gm.unsqueeze(1) * self.attn(modulate(self.norm1(x), sm, scm))
        return x + gf.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sf, scf))


class DiT(nn.Module):
    def __init__(self, input_size=28, patch=4, in_ch=1, hidden=128, depth=4, heads=4, mlp_ratio=4.0, classes=10):
        super().__init__()
        self.patch, self.in_ch = patch, in_ch
        self.x_embedder = nn.Conv2d(in_ch, hidden, patch, stride=patch)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = nn.Embedding(classes + 1, hidden)
        grid = input_size // patch
        self.register_buffer("pos_embed", torch.zeros(1, grid * grid, hidden))
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_linear = nn.Linear(hidden, patch * patch * in_ch)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, t, y):
        b = x.shape[0]
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.final_adaLN(c).chunk(2, dim=1)
        h = self.final_linear(modulate(self.final_norm(h), shift, scale))
        g, p = int(h.shape[1] ** 0.5), self.patch
        h = h.reshape(b, g, g, p, p, self.in_ch).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(b, self.in_ch, g * p, g * p)


def step_time(preset, batch=64, steps=10):
    torch.manual_seed(0)
    model = DiT(hidden=preset["hidden"], depth=preset["depth"], heads=preset["heads"])
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).float()
    x0 = (torch.arange(batch * 784) % 97).float().reshape(batch, 1, 28, 28) / 48.0 - 1.0
    y = torch.arange(batch) % 10

    def one():
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v = a.sqrt() * noise - (1 - a).sqrt() * x0
        loss = F.mse_loss(model(x_t, t, y), v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.mul_(0.999).add_(p.detach(), alpha=0.001)

    one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t0) / steps


if __name__ == "__main__":
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
    torch.set_num_threads(threads)
    for name, preset in [("mnist-tiny", dict(hidden=128, depth=4, heads=4)), ("mnist-small", dict(hidden=192, depth=6, heads=6))]:
        s = step_time(preset)
        print(json.dumps({"preset": name, "threads": threads, "torch": torch.__version__, "msPerStep": s * 1e3, "imagesPerSec": 64 / s}))
