"""PyTorch + transformers side of the CPU comparison: the same synthetic shapes as `cargo bench --bench encoders`,
fp32, torch.inference_mode, SDPA attention, same thread count.

    tools/.venv/bin/python tools/bench_torch.py --arch vit-b-32 --threads 2 --batch 1 32
"""

import argparse
import statistics
import time

import torch
from transformers import CLIPConfig, CLIPModel

ARCHS = {"vit-b-32": (512, 8, 768, 12, 12, 224, 32, 512), "vit-b-16": (512, 8, 768, 12, 12, 224, 16, 512),
         "vit-l-14": (768, 12, 1024, 24, 16, 224, 14, 768)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit-b-32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tw, th, vw, vl, vh, img, patch, proj = ARCHS[args.arch]
    cfg = CLIPConfig(text_config=dict(hidden_size=tw, intermediate_size=4 * tw, num_hidden_layers=12, num_attention_heads=th),
                     vision_config=dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vl,
                                        num_attention_heads=vh, image_size=img, patch_size=patch),
                     projection_dim=proj)
    cfg._attn_implementation = "sdpa"
    model = CLIPModel(cfg).eval()
    print(f"{'arch':10} {'workload':10} {'batch':>5} {'ms/batch':>10} {'items/s':>9}  (torch {torch.__version__}, {args.threads} threads)")
    with torch.inference_mode():
        for batch in args.batch:
            x = torch.randn(batch, 3, img, img)
            model.get_image_features(pixel_values=x)  # warm-up
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                model.get_image_features(pixel_values=x)
                times.append(time.perf_counter() - t0)
            ms = 1000 * statistics.median(times)
            print(f"{args.arch:10} {'image':10} {batch:5d} {ms:10.1f} {batch / ms * 1000:9.2f}", flush=True)


if __name__ == "__main__":
    main()
