"""PyTorch checkpoints for sadm's `.pt` reader (`io::pth`) and DiT recognition (`model::dit::infer_config`), written
by torch.save itself, and the reference DiT's output for a small model.

Files (all small; the values are formulas the Rust tests recompute):
- pth_dtypes.pt: a flat dict of one tensor per dtype torch stores (f32, f64, f16, bf16, f8e4m3fn, i64, i32, i16,
  i8, u8, u32, bool, a 0-d scalar, an empty tensor); pth_complex.pt: a complex64 tensor (refused).
- pth_views.pt: views of one 4×6 storage (its transpose, a row, a column, a strided slice, the base), an expanded
  tensor (stride 0), an nn.Parameter and a tensor with an attribute (saved through _rebuild_from_type_v2).
- pth_train_style.pt: DiT train.py's checkpoint layout {"model", "ema", "opt", "args": argparse.Namespace};
  pth_model_key.pt {"model", "epoch"}; pth_state_dict_ddp.pt {"state_dict" with DDP's "module." prefix, "lr"}.
- refused: pth_legacy.pt (_use_new_zipfile_serialization=False), pth_os_system.pt and pth_eval.pt (pickles that
  would call os.system / builtins.eval), pth_module.pt (torch.save of a whole module), pth_tensor.pt (a bare
  tensor), pth_list.pt, pth_no_tensors.pt, pth_protocol4.pt (pickle protocol 4), pth_big_endian.pt (a copy whose
  byteorder record says "big"), pth_deflated.pt (a copy with compressed entries), pth_no_data_pkl.pt (a zip
  without data.pkl), pth_torchscript.pt (torch.jit.save).
- hand-made archives laid out as torch.save's: pth_huge_stride.pt (a size-1 dimension with stride 2⁶², which
  loads) and pth_out_of_bounds.pt (a view reaching past its storage's end, refused).
- pth_dit_small.pt: the state dict (pos_embed included, as DiT saves it) of the reference DiT below at depth 2,
  hidden 64, 4 heads, patch 2, input 8, 4 channels, learned sigma, 10 classes, with seeded weights (the
  zero-initialised adaLN and final layers and all biases re-randomised); pth_dit_small_reference.safetensors: inputs x, t, y and
  the reference output `out` (computed in float64 from the same float32 weights).
- dit_xl2_state_dict_shapes.json: the reference DiT-XL/2's state-dict names and shapes at latent 32 and 64 (the
  layouts of the published DiT-XL-2-256x256.pt and DiT-XL-2-512x512.pt), built on the meta device.

The DiT classes are DiT's models.py (facebookresearch/DiT), with timm's PatchEmbed, Attention and Mlp inlined as
the timm versions DiT used compute them.

    ~/.cache/sadm-torch-venv/bin/python crates/sadm-core/testdata/pth_reference.py
"""
import argparse
import collections
import copy
import io
import json
import math
import os
import pickle
import zipfile

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def out(name):
    return os.path.join(HERE, name)


# --- timm's layers as DiT uses them ------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim, bias=True):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, act_layer, drop=0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


# --- DiT's models.py ---------------------------------------------------------------------------------------------


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half).to(
            device=t.device
        )
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t):
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        # The one change: the float32 features in the MLP's dtype, so that the float64 copy runs.
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels, force_drop_ids=None):
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0]) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels, train, force_drop_ids=None):
        use_dropout = self.dropout_prob > 0
        if (train and use_dropout) or (force_drop_ids is not None):
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, **block_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, **block_kwargs)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        approx_gelu = lambda: nn.GELU(approximate="tanh")  # noqa: E731
        self.mlp = Mlp(in_features=hidden_size, hidden_features=mlp_hidden_dim, act_layer=approx_gelu, drop=0)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    def __init__(
        self,
        input_size=32,
        patch_size=2,
        in_channels=4,
        hidden_size=1152,
        depth=28,
        num_heads=16,
        mlp_ratio=4.0,
        class_dropout_prob=0.1,
        num_classes=1000,
        learn_sigma=True,
    ):
        super().__init__()
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], int(self.x_embedder.num_patches**0.5))
        self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x):
        c = self.out_channels
        p = self.x_embedder.patch_size[0]
        h = w = int(x.shape[1] ** 0.5)
        assert h * w == x.shape[1]
        x = x.reshape(shape=(x.shape[0], h, w, p, p, c))
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(shape=(x.shape[0], c, h * p, h * p))

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        t = self.t_embedder(t)
        y = self.y_embedder(y, self.training)
        c = t + y
        for block in self.blocks:
            x = block(x, c)
        x = self.final_layer(x, c)
        return self.unpatchify(x)


def get_2d_sincos_pos_embed(embed_dim, grid_size):
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def DiT_XL_2(**kwargs):
    return DiT(depth=28, hidden_size=1152, patch_size=2, num_heads=16, **kwargs)


# --- the files ---------------------------------------------------------------------------------------------------


def dtypes():
    vals = [0.1, -2.5, 65504.0, 1 / 3, 0.0, -0.0]
    d = {
        "f32": torch.tensor(vals, dtype=torch.float32).reshape(2, 3),
        "f64": torch.tensor(vals, dtype=torch.float64).reshape(3, 2),
        "f16": torch.tensor(vals, dtype=torch.float16),
        "bf16": torch.tensor(vals, dtype=torch.bfloat16),
        "f8e4m3fn": torch.tensor([0.5, -448.0, 1 / 3]).to(torch.float8_e4m3fn),
        "i64": torch.tensor([2**40 + 1, -3, 0, 2**63 - 1], dtype=torch.int64),
        "i32": torch.tensor([-7, 2**31 - 1, -(2**31)], dtype=torch.int32),
        "i16": torch.tensor([-32768, 5, 32767], dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 7, 255], dtype=torch.uint8),
        "u32": torch.tensor([0, 2**32 - 1], dtype=torch.uint32),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    torch.save(d, out("pth_dtypes.pt"))
    for k in ["f16", "bf16"]:
        print(k, [float(v) for v in d[k]])
    print("f8e4m3fn", [float(v) for v in d["f8e4m3fn"].float()])
    torch.save({"z": torch.tensor([1 + 2j], dtype=torch.complex64)}, out("pth_complex.pt"))


def views():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    d = {
        "base": base,
        "t": base.t(),
        "row": base[1],
        "col": base[:, 2],
        "slice": base[1:3, ::2],
        "expanded": torch.arange(3, dtype=torch.float32).expand(2, 3),
        "param": nn.Parameter(torch.tensor([1.5, -2.0])),
        "attr": torch.tensor([4.0, 5.0]),
    }
    d["attr"].note = "an attribute: torch saves it with _rebuild_from_type_v2"
    assert not d["t"].is_contiguous() and d["slice"].storage_offset() == 6
    torch.save(d, out("pth_views.pt"))


def tiny(value):
    """A Linear(3, 2)'s state dict (an OrderedDict with _metadata, as modules give) filled with `value + arange`."""
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.copy_(value + torch.arange(6, dtype=torch.float32).reshape(2, 3))
        m.bias.copy_(value + torch.tensor([10.0, 11.0]))
    return m


def nested():
    model, ema = tiny(0.0), tiny(100.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    with torch.no_grad():  # the step moved the weights: put the formula's values back
        model.load_state_dict(tiny(0.0).state_dict())
    args = argparse.Namespace(model="DiT-XL/2", image_size=256, num_classes=1000, epochs=1400, global_seed=0, ckpt=None)
    torch.save(
        {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "args": args},
        out("pth_train_style.pt"),
    )
    torch.save({"model": tiny(0.0).state_dict(), "epoch": 3}, out("pth_model_key.pt"))
    ddp = {f"module.{k}": v for k, v in tiny(0.0).state_dict().items()}
    torch.save({"state_dict": ddp, "lr": 0.1}, out("pth_state_dict_ddp.pt"))


class Evil:
    """Unpickling this calls `call(arg)`: what sadm must refuse without running it."""

    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return (self.call, (self.arg,))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)


def refused():
    w = torch.ones(2)
    torch.save({"w": w}, out("pth_legacy.pt"), _use_new_zipfile_serialization=False)
    torch.save({"w": w, "x": Evil(os.system, "echo pwned")}, out("pth_os_system.pt"))
    torch.save({"w": w, "x": Evil(eval, "print('pwned')")}, out("pth_eval.pt"))
    torch.save(TinyNet(), out("pth_module.pt"))
    torch.save(torch.zeros(3), out("pth_tensor.pt"))
    torch.save([torch.zeros(3), torch.ones(2)], out("pth_list.pt"))
    torch.save({"epoch": 3, "name": "run"}, out("pth_no_tensors.pt"))
    torch.save({"w": w}, out("pth_protocol4.pt"), pickle_protocol=4)
    with zipfile.ZipFile(out("pth_no_data_pkl.pt"), "w") as z:
        z.writestr("archive/version", "3\n")
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), out("pth_torchscript.pt"))
    # Copies of a good archive rewritten by Python's zipfile: the byte order record says "big" / every entry
    # deflated.
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    for name, method, edit in [
        ("pth_big_endian.pt", zipfile.ZIP_STORED, lambda n, b: b"big" if n.endswith("/byteorder") else b),
        ("pth_deflated.pt", zipfile.ZIP_DEFLATED, lambda n, b: b),
    ]:
        with zipfile.ZipFile(out(name), "w", compression=method) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, edit(info.filename, src.read(info.filename)))


class _Storage:
    """Stands for storage data/0 in a hand-made archive."""


class _View:
    """A tensor record as torch pickles one, with any offset, size and stride (torch refuses to make bad ones)."""

    def __init__(self, offset, size, stride):
        self.args = (_Storage(), offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


def hand_made(name, views, storage):
    """An archive laid out as torch.save's, whose data/0 is `storage` (float32) and whose tensors are `views`."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", len(storage)) if isinstance(obj, _Storage) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(views)
    with zipfile.ZipFile(out(name), "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", np.asarray(storage, dtype="<f4").tobytes())


def crafted():
    # A size-1 dimension's stride does not matter, however large; a view past its storage's end is damage.
    hand_made("pth_huge_stride.pt", {"w": _View(1, (1, 3), (2**62, 1))}, [0.0, 1.0, 2.0, 3.0])
    hand_made("pth_out_of_bounds.pt", {"w": _View(2, (2, 2), (2, 1))}, [0.0, 1.0, 2.0, 3.0])


def dit_small():
    torch.manual_seed(0)
    model = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # The layers DiT starts at zero, and every bias (zero too), so that each tensor shows in the output.
            if "adaLN_modulation" in name or name.startswith("final_layer.linear") or name.endswith("bias"):
                p.normal_(0.0, 0.05)
    model.eval()
    sd = model.state_dict()
    assert "pos_embed" in sd
    torch.save(sd, out("pth_dit_small.pt"))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([3.0, 742.0])
    y = torch.tensor([7, 10])  # 10: the null class
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        o = ref(x.double(), t, y)
        o32 = model(x, t, y)
    print("dit_small out max |o|", o.abs().max().item(), "float32 reference vs float64", (o32.double() - o).abs().max().item())
    save_file({"x": x, "t": t, "y": y, "out": o.float().contiguous()}, out("pth_dit_small_reference.safetensors"))


def dit_xl2_shapes():
    layouts = {}
    for name, size in [("DiT-XL-2-256x256", 32), ("DiT-XL-2-512x512", 64)]:
        with torch.device("meta"):
            m = DiT_XL_2(input_size=size)
        layouts[name] = [[k, list(v.shape)] for k, v in m.state_dict().items()]
    with open(out("dit_xl2_state_dict_shapes.json"), "w") as f:
        f.write("{\n")
        for i, (name, entries) in enumerate(layouts.items()):
            rows = ",\n".join(f"    {json.dumps(e)}" for e in entries)
            f.write(f'  "{name}": [\n{rows}\n  ]{"," if i + 1 < len(layouts) else ""}\n')
        f.write("}\n")


def main():
    dtypes()
    views()
    nested()
    refused()
    crafted()
    dit_small()
    dit_xl2_shapes()


if __name__ == "__main__":
    main()
