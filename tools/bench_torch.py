"""The reference side of `cliprt bench`: the same workloads on PyTorch + transformers, ONNX Runtime and OpenVINO, same
synthetic shapes, same batch, same thread count, printing the same table.

    python -m venv tools/.venv && tools/.venv/bin/pip install -r tools/requirements.txt
    tools/.venv/bin/python tools/bench_torch.py --arch vit-b-32 --threads 2 --batch 1 8 32 --workload image text
    tools/.venv/bin/python tools/bench_torch.py --runtime ort openvino openvino-bf16 torch-bf16 --batch 1 8 32
    python3 tools/bench_torch.py --device cuda --dtype fp16 --arch vit-l-14 --batch 1 32 256 --json

PyTorch runs under torch.inference_mode with SDPA attention, fp32 on the CPU or fp16 (or fp32) on CUDA. On CUDA a
measurement covers what `cliprt bench --device cuda` covers: inputs copied from the host, outputs copied back
(then the stream is synchronized). The text tower runs twice: padded to 77 tokens
(OpenAI's clip.tokenize) and padded to the longest prompt of the batch (HF's processor with padding=True), on the
same 32 real prompts `cliprt bench` uses. The other runtimes run the same transformers module, converted per batch
size (fixed shapes; text padded to the longest prompt, as `torch-padlong`):

- `torch-bf16`: the module cast with `model.to(torch.bfloat16)` (oneDNN's bf16 kernels: AMX or AVX512_BF16);
- `ort`: ONNX Runtime on the torch.onnx export, all graph optimizations, intra-op threads = --threads (f32; its CPU
  provider has no bf16 path);
- `openvino` / `openvino-bf16`: OpenVINO on `ov.convert_model` of the module, one stream, LATENCY hint,
  `INFERENCE_NUM_THREADS` = --threads, `INFERENCE_PRECISION_HINT` f32 or bf16 (bf16 runs on AMX or AVX512_BF16
  where the CPU has them; elsewhere OpenVINO falls back to f32 and says so in `precision_used`).
"""

import argparse
import copy
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

# SigLIP: (width, layers, heads, MLP width, image, patch), both towers alike (transformers' SiglipModel, SDPA).
SIGLIP = {
    "siglip-b-16": (768, 12, 12, 3072, 224, 16),
    "siglip-so400m-14-384": (1152, 27, 16, 4304, 384, 14),
}

PROMPTS = [f"a photo of a {x}." for x in [
    "dog", "cat", "car", "airplane", "bird", "horse", "ship", "truck", "frog", "deer", "person riding a bike",
    "bowl of soup", "red apple", "city street at night", "mountain lake", "pizza", "laptop on a desk",
    "golden retriever", "coffee cup", "sunset over the ocean", "group of people", "traffic light", "snowy forest",
    "tabby cat sleeping", "sailboat", "hot air balloon", "bowl of fruit", "train station", "lighthouse",
    "chessboard", "violin", "bicycle"]]


def build_model(arch):
    if arch in SIGLIP:
        from transformers import SiglipConfig, SiglipModel
        w, layers, heads, mlp, img, patch = SIGLIP[arch]
        tower = dict(hidden_size=w, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp)
        cfg = SiglipConfig(text_config=dict(tower), vision_config=dict(tower, image_size=img, patch_size=patch))
        cfg._attn_implementation = "sdpa"
        return SiglipModel(cfg).eval(), img
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
    print(f"{arch:<12} {workload:<10} {batch:>5} {seq:>4} {runtime:>13} {dtype:>5} "
          f"{batch / ms * 1000:>10.2f} {ms:>10.2f} {f'{lo:.1f}–{hi:.1f}':>17}", flush=True)


class ImageTower(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        out = self.m.get_image_features(pixel_values=x)
        return out if torch.is_tensor(out) else out.pooler_output


class TextTower(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, ids, mask):
        out = self.m.get_text_features(input_ids=ids, attention_mask=mask)
        return out if torch.is_tensor(out) else out.pooler_output


def tower_inputs(workload, img, batch):
    """(module wrapper, named example inputs) for one tower at one batch size."""
    if workload == "image":
        return ImageTower, {"x": torch.randn(batch, 3, img, img)}
    ids, mask = prompt_ids(batch)
    return TextTower, {"ids": ids, "mask": mask}


def ort_run(model, workload, img, batch, threads, warmup, reps):
    import onnxruntime as ort

    wrap, inputs = tower_inputs(workload, img, batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tower.onnx")
        torch.onnx.export(wrap(model), tuple(inputs.values()), path, input_names=list(inputs),
                          output_names=["y"], opset_version=17, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = {k: v.numpy() for k, v in inputs.items()}
        return time_runs(lambda: sess.run(None, feed), warmup, reps)


def openvino_run(model, workload, img, batch, threads, precision, warmup, reps):
    """OpenVINO on the converted module; returns (timings, the inference precision OpenVINO reports)."""
    import openvino as ov

    wrap, inputs = tower_inputs(workload, img, batch)
    ovm = ov.convert_model(wrap(model), example_input=tuple(inputs.values()))
    core = ov.Core()
    compiled = core.compile_model(ovm, "CPU", {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": precision,
    })
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    used = next((short for name, short in [("bfloat16", "bf16"), ("float32", "f32"), ("float16", "f16")]
                 if name in hint), hint)
    request = compiled.create_infer_request()
    feed = [v.numpy() for v in inputs.values()]
    return time_runs(lambda: request.infer(feed), warmup, reps), used


def main():
    global JSON
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit-b-32", choices=list(ARCHS) + list(SIGLIP))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--workload", nargs="+", default=["image", "text"], choices=["image", "text"])
    ap.add_argument("--runtime", nargs="+", default=["torch"],
                    choices=["torch", "torch-bf16", "ort", "openvino", "openvino-bf16"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON object per measurement")
    args = ap.parse_args()
    JSON = args.json
    if args.arch in SIGLIP and args.workload != ["image"]:
        ap.error("SigLIP archs: --workload image (the text side here tokenizes with CLIP's vocabulary)")
    if args.device == "cpu" and args.dtype != "fp32":
        ap.error("--dtype is for CUDA; on the CPU pick the precision by runtime (torch-bf16, openvino-bf16)")
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
        print(f"{'arch':<12} {'workload':<10} {'batch':>5} {'seq':>4} {'runtime':>13} {'prec':>5} {'items/s':>10} "
              f"{'ms/batch':>10} {'spread (min–max)':>17}")
    report = dict(device=args.device, dtype=args.dtype)
    cpu_only = {"ort", "openvino", "openvino-bf16", "torch-bf16"}
    if dev.type != "cpu" and cpu_only & set(args.runtime):
        ap.error(f"{', '.join(sorted(cpu_only & set(args.runtime)))}: CPU comparisons only")
    bf16_model = None
    with torch.inference_mode():
        for workload in args.workload:
            for runtime in args.runtime:
                for batch in args.batch:
                    if runtime == "torch" and workload == "image":
                        x = torch.randn(batch, 3, img, img)
                        stats = timed(lambda: model.get_image_features(pixel_values=x.to(dev, dtype)))
                        row(args.arch, "image", batch, None, "torch", stats, **report)
                    elif runtime == "torch" and workload == "text":
                        for pad, label in [(77, "torch-pad77"), (None, "torch-padlong")]:
                            ids, mask = prompt_ids(batch, pad)
                            stats = timed(lambda: model.get_text_features(input_ids=ids.to(dev),
                                                                          attention_mask=mask.to(dev)))
                            row(args.arch, "text", batch, ids.shape[1], label, stats, **report)
                    elif runtime == "torch-bf16":
                        if bf16_model is None:
                            bf16_model = copy.deepcopy(model).to(torch.bfloat16)
                        wrap, inputs = tower_inputs(workload, img, batch)
                        tower = wrap(bf16_model)
                        args_in = [v.to(torch.bfloat16) if v.is_floating_point() else v for v in inputs.values()]
                        stats = timed(lambda: tower(*args_in))
                        seq = None if workload == "image" else inputs["ids"].shape[1]
                        row(args.arch, workload, batch, seq, "torch-bf16", stats, device="cpu", dtype="bf16")
                    elif runtime == "ort":
                        stats = ort_run(model, workload, img, batch, args.threads, args.warmup, args.reps)
                        seq = None if workload == "image" else prompt_ids(batch)[0].shape[1]
                        row(args.arch, workload, batch, seq, "onnxruntime", stats, **report)
                    else:
                        precision = "bf16" if runtime == "openvino-bf16" else "f32"
                        stats, used = openvino_run(model, workload, img, batch, args.threads, precision,
                                                   args.warmup, args.reps)
                        seq = None if workload == "image" else prompt_ids(batch)[0].shape[1]
                        row(args.arch, workload, batch, seq, runtime, stats, device="cpu", dtype=used)


if __name__ == "__main__":
    main()
