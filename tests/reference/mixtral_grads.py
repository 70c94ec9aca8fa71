#!/usr/bin/python3
# Independent reference for moefy's MoE backward (tests/test_heal.cpp): a
# Mixtral-layout LLaMA written from the Hugging Face modelling code's
# equations in PyTorch (float64), its mean next-token NLL on the given tokens,
# and torch.autograd's gradients of every router and expert weight.
#   usage: mixtral_grads.py MODEL_DIR TOKENS(comma-separated) OUT.json
import json
import struct
import sys

import numpy as np
import torch


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, m in header.items():
        if name == "__metadata__":
            continue
        assert m["dtype"] == "F32", (name, m["dtype"])
        b, e = m["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[b:e], dtype=np.float32).copy().reshape(m["shape"])).double()
    return out


def main():
    model_dir, toks, out_path = sys.argv[1], [int(t) for t in sys.argv[2].split(",")], sys.argv[3]
    cfg = json.load(open(model_dir + "/config.json"))
    W = read_safetensors(model_dir + "/model.safetensors")
    trained = [n for n in W if ".block_sparse_moe." in n]
    for n in trained:
        W[n].requires_grad_(True)
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or H // nh
    E, k, eps = cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["rms_norm_eps"]
    T = len(toks)

    def rmsnorm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)

    def rope(x):  # x: [heads, T, d]
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    x = W["model.embed_tokens.weight"][torch.tensor(toks)]
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        xa = rmsnorm(x, W[p + "input_layernorm.weight"])
        q = rope((xa @ W[p + "self_attn.q_proj.weight"].T).view(T, nh, d).transpose(0, 1))
        kk = rope((xa @ W[p + "self_attn.k_proj.weight"].T).view(T, nkv, d).transpose(0, 1))
        v = (xa @ W[p + "self_attn.v_proj.weight"].T).view(T, nkv, d).transpose(0, 1)
        kk, v = kk.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
        att = torch.softmax(q @ kk.transpose(1, 2) / d**0.5 + mask, -1) @ v
        x = x + att.transpose(0, 1).reshape(T, nh * d) @ W[p + "self_attn.o_proj.weight"].T
        xf = rmsnorm(x, W[p + "post_attention_layernorm.weight"])
        m = p + "block_sparse_moe."
        probs = torch.softmax(xf @ W[m + "gate.weight"].T, -1)
        top_w, top_i = torch.topk(probs, k, -1)
        top_w = top_w / top_w.sum(-1, keepdim=True)
        y = torch.zeros_like(x)
        for e in range(E):
            rows, slot = (top_i == e).nonzero(as_tuple=True)
            if len(rows) == 0:
                continue
            xe = xf[rows]
            h = torch.nn.functional.silu(xe @ W[m + f"experts.{e}.w1.weight"].T) * (xe @ W[m + f"experts.{e}.w3.weight"].T)
            y = y.index_add(0, rows, top_w[rows, slot, None] * (h @ W[m + f"experts.{e}.w2.weight"].T))
        x = x + y
    logits = rmsnorm(x, W["model.norm.weight"]) @ W["lm_head.weight"].T
    loss = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(toks[1:]))
    loss.backward()
    json.dump({"loss": loss.item(), "grads": {n: (W[n].grad if W[n].grad is not None else torch.zeros_like(W[n])).flatten().tolist() for n in trained}}, open(out_path, "w"))


main()
