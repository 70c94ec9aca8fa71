#!/usr/bin/python3
"""Writes LLaMA-MoE-style split and importance files for moefy's import tests.

Every file is written with torch.save exactly as the reference (pjlab-sys4nlp/llama-moe, see
../shared/reference/llama-moe-expert-construction.md §0.1, §1-§6) writes it:

  random      list of int,                  pickle_protocol=HIGHEST  <m>-8Expert-Split-Random/
  clustering  list of numpy.int32 scalars,  pickle_protocol=HIGHEST  <m>-4Expert-Split-Clustering-l2/
  graph       list of int, default protocol (trans_gp)               <m>-16Expert-Split-Graph-l1_norm/gp_split/
              (its folder above holds METIS text graphs under the same names, as the reference leaves them)
  importance  1-D float32 tensors [I],      pickle_protocol=HIGHEST  Gradients12/<m>-Gradients-l1_norm-sample-feature_change/<c>/
  gradient    the reference's own algorithms (§5.2 greedy, §5.3 top-k, §6 residual), re-implemented below, run
              on those scores read back in the reference's LEXICOGRAPHIC folder order:
                numpy float64 labels [I]                             .../12Experts-64Neurons/
                list of 12 lists of int                              .../12Experts-96Neurons-Share/
                list of 1 + 11 lists (residual first), not shared    .../11Experts-1Residuals-64Neurons/
                the same, shared                                     .../11Experts-1Residuals-64Neurons-Share/
  other       the random labels as numpy float64 with protocol 2,   compat/numpy-protocol2/
              and as an int64 torch tensor                           compat/torch-int64/
  refused     a pickle whose reduce is os.system                     evil/os_system/

The label splits come from moefy's own plans of the demo model (source_plans/*.json, made with `moefy split`
unless --plans gives them), so the imported plans must equal them. Scores are seeded, distinct within each vector
(so torch.sort's instability cannot matter), and the same on every run.

usage: scripts/make-llama-moe-fixtures.py --out tests/data/llama_moe [--moefy build/moefy --model models/tinyllama-demo]
                                          [--plans DIR]    (reuse DIR/*.json instead of running moefy)
                                          [--parts labels,gradient]
"""
import argparse
import json
import os
import pickle
import shutil
import subprocess

import numpy as np
import torch

MODEL_NAME = "tinyllama-demo"
HIGHEST = pickle.HIGHEST_PROTOCOL


def plan_labels(plan, layer):
    experts = plan["layers"][layer]["experts"]
    labels = [0] * plan["model"]["intermediate_size"]
    for e, ids in enumerate(experts):
        for n in ids:
            labels[n] = e
    return labels


def source_plans(args, out):
    dst = os.path.join(out, "source_plans")
    os.makedirs(dst, exist_ok=True)
    runs = {
        "random": ["split", "random", "--experts", "8", "--seed", "5"],
        "cluster": ["split", "cluster", "--experts", "4", "--seed", "0"],
        "graph": ["split", "graph", "--experts", "16", "--data", os.path.join(args.repo, "data/calib.jsonl"),
                  "--tokens", "4096", "--ctx", "256"],
    }
    plans = {}
    for name, cmd in runs.items():
        path = os.path.join(dst, name + ".json")
        if args.plans:
            if os.path.abspath(args.plans) != os.path.abspath(dst):
                shutil.copyfile(os.path.join(args.plans, name + ".json"), path)
        else:
            subprocess.run([args.moefy] + cmd + ["--model", args.model, "--out", path], check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            plans[name] = json.load(f)
    return plans


def label_folders(out, plans):
    L = plans["random"]["model"]["num_layers"]
    d = os.path.join(out, f"{MODEL_NAME}-8Expert-Split-Random")
    os.makedirs(d, exist_ok=True)
    for l in range(L):  # llama_split_random.py: a list of python ints, HIGHEST_PROTOCOL
        torch.save(plan_labels(plans["random"], l), os.path.join(d, f"layers.{l}.mlp.up_proj.weight"), pickle_protocol=HIGHEST)

    d = os.path.join(out, f"{MODEL_NAME}-4Expert-Split-Clustering-l2")
    os.makedirs(d, exist_ok=True)
    for l in range(L):  # llama_split_clustering.py: [x for x in kmeans.labels_] -> numpy int32 scalars
        labels = [x for x in np.array(plan_labels(plans["cluster"], l), dtype=np.int32)]
        torch.save(labels, os.path.join(d, f"layers.{l}.mlp.up_proj.weight"), pickle_protocol=HIGHEST)

    d = os.path.join(out, f"{MODEL_NAME}-16Expert-Split-Graph-l1_norm")
    os.makedirs(os.path.join(d, "gp_split"), exist_ok=True)
    I = plans["graph"]["model"]["intermediate_size"]
    for l in range(L):
        with open(os.path.join(d, f"layers.{l}.mlp.up_proj.weight"), "w") as f:  # the METIS input stays beside gp_split/
            f.write(f"{I} 0 001\n" + "\n" * I)
        # llama_split_graph_trans_gp.py: torch.save(list(labels), path) with the default protocol (2)
        torch.save(list(plan_labels(plans["graph"], l)), os.path.join(d, "gp_split", f"layers.{l}.mlp.up_proj.weight"))


# ---- the reference's gradient split (§5.2, §5.3, §6), on python lists


def ranked(scores):
    """Neuron ids by descending score (criterion max); scores are distinct within a vector."""
    return sorted(range(len(scores)), key=lambda n: (-scores[n], n))


def greedy(scores, expert_size, used=None, limit=None):
    """§5.2: the expert with room whose best unused neuron scores highest takes it; ties to the LATER expert.
    Returns the neurons of each expert in pick order."""
    I, E = len(scores[0]), len(scores)
    order = [ranked(s) for s in scores]
    used = list(used) if used else [False] * I
    ptr, picks = [0] * E, [[] for _ in range(E)]
    target = limit if limit is not None else I
    assigned = 0
    while assigned < target:
        best, bn, be = -float("inf"), -1, -1
        for e in range(E):
            if len(picks[e]) == expert_size or ptr[e] == I:
                continue
            while ptr[e] < I and used[order[e][ptr[e]]]:
                ptr[e] += 1
            if ptr[e] == I:
                continue
            v = scores[e][order[e][ptr[e]]]
            if v >= best:
                best, bn, be = v, order[e][ptr[e]], e
        used[bn] = True
        picks[be].append(bn)
        ptr[be] += 1
        assigned += 1
    return picks


def residual_split(scores, routed, residual, expert_size, share):
    """§6: residual neurons are those in the top expert_size of the most routed experts (ascending id, the
    capacity cut keeps the lowest ids); only the first `routed` score vectors are used."""
    I = len(scores[0])
    scores = scores[:routed]
    lists = [ranked(s) for s in scores]
    res, is_res = [], [False] * I
    while len(res) < residual * expert_size:
        cnt = [0] * I
        for e in range(routed):
            for n in lists[e][:expert_size]:
                cnt[n] += 1
        for r in range(routed, 0, -1):
            cand = [n for n in range(I) if cnt[n] == r]
            if cand:
                cand = cand[: residual * expert_size - len(res)]
                res += cand
                for n in cand:
                    is_res[n] = True
                break
        lists = [[n for n in lst if not is_res[n]] for lst in lists]
    k, m = divmod(len(res), residual)  # chunk_list: the first len % R chunks get one more
    chunks, at = [], 0
    for r in range(residual):
        w = k + (1 if r < m else 0)
        chunks.append(res[at:at + w])
        at += w
    if share:
        moe = [lst[:expert_size] for lst in lists]
    else:
        moe = greedy(scores, expert_size, used=is_res, limit=routed * expert_size)
    return chunks + moe


def gradient_folders(out, L, I):
    clusters = 12
    grads = os.path.join(out, "Gradients12", f"{MODEL_NAME}-Gradients-l1_norm-sample-feature_change")
    g = torch.Generator().manual_seed(20240611)
    for c in range(clusters):
        d = os.path.join(grads, str(c))
        os.makedirs(d, exist_ok=True)
        for l in range(L):
            for proj in ("up_proj", "gate_proj"):
                s = (torch.randperm(I, generator=g).double() + 0.5 * torch.rand(I, generator=g, dtype=torch.float64)) / I
                torch.save(s.float(), os.path.join(d, f"layers.{l}.mlp.{proj}.weight.change"), pickle_protocol=HIGHEST)

    split = os.path.join(out, f"{MODEL_NAME}-Split-Gradient-max-l1_norm-sample-feature_change")
    folders = sorted(os.listdir(grads))  # the reference's order: 0, 1, 10, 11, 2, ...
    kinds = {"12Experts-64Neurons": None, "12Experts-96Neurons-Share": None,
             "11Experts-1Residuals-64Neurons": None, "11Experts-1Residuals-64Neurons-Share": None}
    for k in kinds:
        os.makedirs(os.path.join(split, k), exist_ok=True)
    for l in range(L):
        name = f"layers.{l}.mlp.up_proj.weight"
        scores = [torch.load(os.path.join(grads, f, name + ".change")).double().tolist() for f in folders]
        picks = greedy(scores, 64)  # §5.2: labels as a float64 numpy array
        labels = np.zeros(I, dtype=np.float64)
        for e, ids in enumerate(picks):
            labels[ids] = e
        torch.save(labels, os.path.join(split, "12Experts-64Neurons", name), pickle_protocol=HIGHEST)
        shared = [ranked(s)[:96] for s in scores]  # §5.3
        torch.save(shared, os.path.join(split, "12Experts-96Neurons-Share", name), pickle_protocol=HIGHEST)
        for share, k in ((False, "11Experts-1Residuals-64Neurons"), (True, "11Experts-1Residuals-64Neurons-Share")):
            torch.save(residual_split(scores, 11, 1, 64, share), os.path.join(split, k, name), pickle_protocol=HIGHEST)


class OsSystem:
    """What a malicious split file would hold: unpickling it runs os.system."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/moefy-pickle-was-executed",))


def compat_folders(out, plans):
    """Encodings the reference does not use but a user's own scripts may: numpy labels with torch.save's default
    protocol 2 (numpy's _reconstruct, bytes via _codecs.encode) and int64 torch tensors."""
    L = plans["random"]["model"]["num_layers"]
    for name in ("numpy-protocol2", "torch-int64"):
        os.makedirs(os.path.join(out, "compat", name), exist_ok=True)
    for l in range(L):
        labels = plan_labels(plans["random"], l)
        f = f"layers.{l}.mlp.up_proj.weight"
        torch.save(np.array(labels, dtype=np.float64), os.path.join(out, "compat", "numpy-protocol2", f))
        torch.save(torch.tensor(labels, dtype=torch.int64), os.path.join(out, "compat", "torch-int64", f),
                   pickle_protocol=HIGHEST)


def evil_folder(out, L):
    d = os.path.join(out, "evil", "os_system")
    os.makedirs(d, exist_ok=True)
    for l in range(L):  # a whole folder, so the import gets as far as reading layer 0
        torch.save([OsSystem()], os.path.join(d, f"layers.{l}.mlp.up_proj.weight"), pickle_protocol=HIGHEST)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", required=True)
    ap.add_argument("--moefy", default=os.path.join(here, "build", "moefy"))
    ap.add_argument("--model", default=os.path.join(here, "models", MODEL_NAME))
    ap.add_argument("--plans", help="folder of random.json, cluster.json, graph.json to reuse")
    ap.add_argument("--parts", default="labels,gradient", help="labels (random, clustering, graph, refused) and/or "
                    "gradient (importance and the gradient splits)")
    args = ap.parse_args()
    args.repo = here
    os.makedirs(args.out, exist_ok=True)
    plans = source_plans(args, args.out)
    L, I = plans["random"]["model"]["num_layers"], plans["random"]["model"]["intermediate_size"]
    parts = args.parts.split(",")
    if "labels" in parts:
        label_folders(args.out, plans)
        compat_folders(args.out, plans)
        evil_folder(args.out, L)
    if "gradient" in parts:
        gradient_folders(args.out, L, I)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("LLaMA-MoE-style torch.save files for tests/test_import.cpp, made by "
                "scripts/make-llama-moe-fixtures.py (see its docstring); do not edit by hand.\n"
                f"torch {torch.__version__}, numpy {np.__version__}.\n")


if __name__ == "__main__":
    main()
