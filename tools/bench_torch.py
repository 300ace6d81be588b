"""The reference side of `cliprt bench`: the same workloads on PyTorch + transformers (and ONNX Runtime for the image
tower), same synthetic shapes, same batch, same thread count, printing the same table.

    python -m venv tools/.venv && tools/.venv/bin/pip install -r tools/requirements.txt
    tools/.venv/bin/python tools/bench_torch.py --arch vit-b-32 --threads 2 --batch 1 8 32 --workload image text
    tools/.venv/bin/python tools/bench_torch.py --runtime ort --workload image --batch 1 8 32
    python3 tools/bench_torch.py --device cuda --dtype fp16 --arch vit-l-14 --batch 1 32 256 --json

PyTorch runs under torch.inference_mode with SDPA attention, fp32 on the CPU or fp16 (or fp32) on CUDA. On CUDA a
measurement covers what `cliprt bench --device cuda` covers: inputs copied from the host, outputs copied back
(then the stream is synchronized). The text tower runs twice: padded to 77 tokens
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


JSON = False


def row(arch, workload, batch, seq, runtime, stats, device="cpu", dtype="fp32"):
    ms, lo, hi = stats
    if JSON:
        import json
        print(json.dumps(dict(arch=arch, workload=workload, batch=batch, seq=seq, runtime=runtime, device=device,
                              precision=dtype, items_per_s=batch / ms * 1000, ms_per_batch=ms, ms_min=lo,
                              ms_max=hi)), flush=True)
        return
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
    global JSON
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit-b-32", choices=list(ARCHS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--workload", nargs="+", default=["image", "text"], choices=["image", "text"])
    ap.add_argument("--runtime", nargs="+", default=["torch"], choices=["torch", "ort"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON object per measurement")
    args = ap.parse_args()
    JSON = args.json
    if args.device == "cpu" and args.dtype != "fp32":
        ap.error("the CPU comparison runs fp32")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, img = build_model(args.arch)
    dev = torch.device(args.device)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    model = model.to(dev, dtype)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        def run():
            out = fn()
            # transformers 5 returns the projected embeddings as pooler_output; 4.x returns the tensor.
            emb = out if torch.is_tensor(out) else out.pooler_output
            emb.float().cpu()  # the embeddings back on the host, as cliprt returns them
            sync()
        return time_runs(run, args.warmup, args.reps)

    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"{args.threads} threads"
    if not JSON:
        print(f"torch {torch.__version__}, {name}, {args.dtype}")
        print(f"{'arch':<12} {'workload':<10} {'batch':>5} {'seq':>4} {'runtime':>11} {'items/s':>10} "
              f"{'ms/batch':>10} {'spread (min–max)':>17}")
    report = dict(device=args.device, dtype=args.dtype)
    with torch.inference_mode():
        for workload in args.workload:
            for runtime in args.runtime:
                for batch in args.batch:
                    if workload == "image" and runtime == "torch":
                        x = torch.randn(batch, 3, img, img)
                        stats = timed(lambda: model.get_image_features(pixel_values=x.to(dev, dtype)))
                        row(args.arch, "image", batch, None, "torch", stats, **report)
                    elif workload == "image" and runtime == "ort":
                        if dev.type != "cpu":
                            ap.error("the ONNX Runtime comparison is CPU only")
                        stats = ort_image(model, img, batch, args.threads, args.warmup, args.reps)
                        row(args.arch, "image", batch, None, "onnxruntime", stats, **report)
                    elif workload == "text" and runtime == "torch":
                        for pad, label in [(77, "torch-pad77"), (None, "torch-padlong")]:
                            ids, mask = prompt_ids(batch, pad)
                            stats = timed(lambda: model.get_text_features(input_ids=ids.to(dev),
                                                                          attention_mask=mask.to(dev)))
                            row(args.arch, "text", batch, ids.shape[1], label, stats, **report)


if __name__ == "__main__":
    main()
