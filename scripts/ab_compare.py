"""Faithfulness A/B: prints the loss curves and final block-output MSEs that
`apiq2gguf trace-block` (ours-*.json) and ab_torch_step.py (torch-*.json) wrote into DIR.

usage: python3 ab_compare.py DIR
"""
import glob
import json
import os
import sys


def main():
    d = sys.argv[1]
    runs = {}
    for f in sorted(glob.glob(f"{d}/ours-*.json")) + sorted(glob.glob(f"{d}/torch-*.json")):
        runs[os.path.basename(f)[:-5]] = json.load(open(f))
    cfg = json.load(open(f"{d}/config.json"))
    n = cfg["recipe"]["nsamples"]
    names = list(runs)
    print(f"A/B on block {cfg['layer']}: {n} windows x {cfg['seqlen']} tokens, {cfg['recipe']['epochs']} epochs")
    print("step losses (first steps; identical inputs and initial parameters):")
    print("step  " + "  ".join(f"{k:>14}" for k in names))
    for i in [0, 1, 2, 3, 4, 9, 49, 99]:
        if all(i < len(r["losses"]) for r in runs.values()):
            print(f"{i:>4}  " + "  ".join(f"{runs[k]['losses'][i]:>14.6e}" for k in names))
    print("mean loss per epoch:")
    print("epoch " + "  ".join(f"{k:>14}" for k in names))
    epochs = min(len(r["losses"]) for r in runs.values()) // n
    for e in range(epochs):
        print(f"{e:>5} " + "  ".join(f"{sum(runs[k]['losses'][e * n:(e + 1) * n]) / n:>14.6e}" for k in names))
    print("final  " + "  ".join(f"{k:>14}" for k in names))
    print("mse   " + "  ".join(f"{runs[k]['mse_final']:>14.6e}" for k in names))
    print("train s " + "  ".join(f"{runs[k].get('train_seconds', float('nan')):>13.1f}" for k in names))
    rtn = [r["mse_rtn"] for r in runs.values() if "mse_rtn" in r]
    if rtn:
        print(f"rtn mse {rtn[0]:.6e}")


if __name__ == "__main__":
    main()
