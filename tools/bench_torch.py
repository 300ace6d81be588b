"""The reference side of `cliprt bench`: the same workloads on PyTorch + transformers (and ONNX Runtime for the image
tower), same synthetic shapes, same batch, same thread count, printing the same table.

    python -m venv tools/.venv && tools/.venv/bin/pip install -r tools/requirements.txt
    tools/.venv/bin/python tools/bench_torch.py --arch vit-b-32 --threads 2 --batch 1 8 32 --workload image text
    tools/.venv/bin/python tools/bench_torch.py --runtime ort --workload image --batch 1 8 32

PyTorch runs fp32 under torch.inference_mode with SDPA attention. The text tower runs twice: padded to 77 tokens
(OpenAI's clip.tokenize) and padded to the longest prompt of the batch (HF's processor with padding=True), on the
same 32 real prompts `cliprt bench` uses. ONNX Runtime runs the image tower exported by torch.onnx at a fixed batch
(all graph optimizations on, intra-op threads = --threads).
"""

import argparse
import os
import statistics
import tempfile
import time

import torch
from transformers import CLIPConfig, CLIPModel

# (text width, text layers, text heads, vision width, vision layers, vision heads, image, patch, projection, act)
ARCHS = {
    "vit-b-32": (512, 12, 8, 768, 12, 12, 224, 32, 512, "quick_gelu"),
    "vit-b-16": (512, 12, 8, 768, 12, 12, 224, 16, 512, "quick_gelu"),
    "vit-l-14": (768, 12, 12, 1024, 24, 16, 224, 14, 768, "quick_gelu"),
    "vit-l-14-336": (768, 12, 12, 1024, 24, 16, 336, 14, 768, "quick_gelu"),
    "vit-h-14": (1024, 24, 16, 1280, 32, 16, 224, 14, 1024, "gelu"),
}

PROMPTS = [f"a photo of a {x}." for x in [
    "dog", "cat", "car", "airplane", "bird", "horse", "ship", "truck", "frog", "deer", "person riding a bike",
    "bowl of soup", "red apple", "city street at night", "mountain lake", "pizza", "laptop on a desk",
    "golden retriever", "coffee cup", "sunset over the ocean", "group of people", "traffic light", "snowy forest",
    "tabby cat sleeping", "sailboat", "hot air balloon", "bowl of fruit", "train station", "lighthouse",
    "chessboard", "violin", "bicycle"]]


def build_model(arch):
    tw, tl, th, vw, vl, vh, img, patch, proj, act = ARCHS[arch]
    cfg = CLIPConfig(text_config=dict(hidden_size=tw, intermediate_size=4 * tw, num_hidden_layers=tl,
                                      num_attention_heads=th, hidden_act=act),
                     vision_config=dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vl,
                                        num_attention_heads=vh, image_size=img, patch_size=patch, hidden_act=act),
                     projection_dim=proj)
    cfg._attn_implementation = "sdpa"
    return CLIPModel(cfg).eval(), img


def prompt_ids(batch, pad_to=None):
    """Token ids of the real prompts (cycled to `batch`), padded to `pad_to` or to the longest, HF style."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizer.json"))
    rows = [tok.encode(PROMPTS[i % len(PROMPTS)]).ids for i in range(batch)]
    width = pad_to or max(len(r) for r in rows)
    ids = torch.full((batch, width), 49407, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


def time_runs(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ms.append(1000 * (time.perf_counter() - t))
    return statistics.median(ms), min(ms), max(ms)


def row(arch, workload, batch, seq, runtime, stats):
    ms, lo, hi = stats
    seq = "-" if seq is None else str(seq)
    print(f"{arch:<12} {workload:<10} {batch:>5} {seq:>4} {runtime:>11} {batch / ms * 1000:>10.2f} {ms:>10.2f} "
          f"{f'{lo:.1f}–{hi:.1f}':>17}", flush=True)


def ort_image(model, img, batch, threads, warmup, reps):
    import onnxruntime as ort

    class Tower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.get_image_features(pixel_values=x)

    x = torch.randn(batch, 3, img, img)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vision.onnx")
        torch.onnx.export(Tower(model), (x,), path, input_names=["x"], output_names=["y"], opset_version=17,
                          dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = {"x": x.numpy()}
        return time_runs(lambda: sess.run(None, feed), warmup, reps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit-b-32", choices=list(ARCHS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--workload", nargs="+", default=["image", "text"], choices=["image", "text"])
    ap.add_argument("--runtime", nargs="+", default=["torch"], choices=["torch", "ort"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, img = build_model(args.arch)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32")
    print(f"{'arch':<12} {'workload':<10} {'batch':>5} {'seq':>4} {'runtime':>11} {'items/s':>10} {'ms/batch':>10} "
          f"{'spread (min–max)':>17}")
    with torch.inference_mode():
        for workload in args.workload:
            for runtime in args.runtime:
                for batch in args.batch:
                    if workload == "image" and runtime == "torch":
                        x = torch.randn(batch, 3, img, img)
                        stats = time_runs(lambda: model.get_image_features(pixel_values=x), args.warmup, args.reps)
                        row(args.arch, "image", batch, None, "torch", stats)
                    elif workload == "image" and runtime == "ort":
                        stats = ort_image(model, img, batch, args.threads, args.warmup, args.reps)
                        row(args.arch, "image", batch, None, "onnxruntime", stats)
                    elif workload == "text" and runtime == "torch":
                        for pad, label in [(77, "torch-pad77"), (None, "torch-padlong")]:
                            ids, mask = prompt_ids(batch, pad)
                            stats = time_runs(lambda: model.get_text_features(input_ids=ids, attention_mask=mask),
                                              args.warmup, args.reps)
                            row(args.arch, "text", batch, ids.shape[1], label, stats)


if __name__ == "__main__":
    main()
