"""The real SDXL inpainting architecture on this machine: built with random weights from its published
configs (nothing downloaded), exported, served on onnx-cpu, and one 1024x1024 edit of 2 steps run.

    .venv/bin/python benchmarks/sdxl_real_architecture.py [--out out/sdxl-real]

Reports the folder's size, the export's time and peak memory (the resident memory of the export command
and its children, sampled every 0.2 s), the repository's size, the server's peak memory while loading and
editing (tritonserver and its model processes), and the edit's time and result. Writes results.md under
--out. Random weights make noise, not pictures: what this measures is size, memory and time.

The configs are those of diffusers/stable-diffusion-xl-1.0-inpainting-0.1 (the UNet: 9 input channels,
blocks 320/640/1280 with 1/2/10 transformer layers, 2048-wide cross-attention, text_time conditioning of
6 x 256 + 1280; CLIP ViT-L and OpenCLIP bigG text models; SDXL's VAE, scaling factor 0.13025, which
overflows in FP16).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent

UNET = dict(
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], center_input_sample=False,
    cross_attention_dim=2048, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=9, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4,
    projection_class_embeddings_input_dim=2816, sample_size=128, transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], use_linear_projection=True,
)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0,
              eos_token_id=2, pad_token_id=1)
OPENCLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                     num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
                     bos_token_id=0, eos_token_id=2, pad_token_id=1)
VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
           act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=1024, scaling_factor=0.13025,
           force_upcast=True)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 steps_offset=1, timestep_spacing="leading", prediction_type="epsilon", interpolation_type="linear",
                 use_karras_sigmas=False)


def build_random_sdxl_inpainting(folder: Path) -> Path:
    """The architecture with random weights, saved in FP16 (half the disk, and what the export reads)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from smartedit.export.tiny_model import write_tokenizer

    torch.manual_seed(0)
    write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2", pad_token="!")
    # Each model made FP16 as soon as it is built: the UNet alone is 10 GB in FP32.
    unet = UNet2DConditionModel(**UNET).half()
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L)).half()
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**OPENCLIP_BIGG)).half()
    pipeline = StableDiffusionXLInpaintPipeline(
        vae=AutoencoderKL(**VAE).half(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"), unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER), requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


class PeakMemory:
    """The largest proportional set size (PSS: each shared page divided among the processes that map it, so
    the server's shared memory and the weights mapped from files are counted once) of a process and its
    children, and the largest memory in use on the machine (total less available), sampled every second."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.machine_peak, self._stop = pid, 0, 0, threading.Event()
        self._in_use_before = psutil.virtual_memory().total - psutil.virtual_memory().available
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            memory = psutil.virtual_memory()
            self.machine_peak = max(self.machine_peak, memory.total - memory.available - self._in_use_before)
            try:
                root = psutil.Process(self.pid)
                processes = [root] + root.children(recursive=True)
                self.peak = max(self.peak, sum(p.memory_full_info().pss for p in processes if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(1.0)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def size_of(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/sdxl-real"))
    parser.add_argument("--serve-only", action="store_true", help="serve the repository exported by an earlier run")
    parser.add_argument("--build", type=Path, default=None, help=argparse.SUPPRESS)  # the child that builds
    args = parser.parse_args()
    if args.build:
        build_random_sdxl_inpainting(args.build)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    gib = 2**30
    lines = [f"Real SDXL inpainting architecture (random weights), {time.strftime('%Y-%m-%d')}, on "
             f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / gib:.0f} GiB.", ""]
    model = args.out / "sdxl-inpainting-random"
    if not (model / "model_index.json").exists():
        # In a process of its own, so that none of its 10 GB stays in this one while the export runs.
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--build", str(model)], check=True)
        print(f"built {model} in {time.perf_counter() - started:.0f} s", flush=True)
    lines.append(f"- the diffusers folder (FP16 safetensors): {size_of(model) / gib:.1f} GiB")
    repository = args.out / "model_repository"
    if args.serve_only:
        lines.append(f"- the repository: {size_of(repository) / gib:.1f} GiB (exported before; --serve-only)")
        serve(repository, args.out, lines)
        return
    command = [sys.executable, "-m", "smartedit", "export", "--model", f"sdxl={model}", "--no-segmentation",
               "--out", str(repository)]
    started = time.perf_counter()
    with open(args.out / "export.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        memory = PeakMemory(process.pid)
        code = process.wait()
    peak = memory.stop()
    export_s = time.perf_counter() - started
    print(f"export: exit {code}, {export_s:.0f} s, peak {peak / gib:.1f} GiB", flush=True)
    lines += [f"- `{' '.join(['smartedit'] + command[3:])}`: exit {code}, {export_s:.0f} s, peak memory "
              f"{peak / gib:.1f} GiB (PSS of the command and its children; log: export.log)"]
    if code != 0:
        (args.out / "results.md").write_text("\n".join(lines) + "\n")
        raise SystemExit(f"the export failed: see {args.out / 'export.log'}")
    lines.append(f"- the repository: {size_of(repository) / gib:.1f} GiB "
                 f"(unet {size_of(repository / 'unet') / gib:.1f} GiB)")
    serve(repository, args.out, lines)


def serve(repository: Path, out: Path, lines: list[str]) -> None:
    """Serve ``repository`` on onnx-cpu, run one 1024x1024 edit of 2 steps, add the figures to ``lines`` and
    write them to results.md."""
    from smartedit.ops.server import ServerAddress, TritonServer, free_port
    from smartedit_client import InpaintClient

    side = 1024
    image = Image.new("RGB", (side, side), (120, 170, 230))
    ImageDraw.Draw(image).rectangle([0, 700, side, side], fill=(90, 140, 70))
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).rectangle([300, 400, 700, 900], fill=255)
    address = ServerAddress(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    started = time.perf_counter()
    gib = 2**30
    server = TritonServer(repository, address, log_file=out / "tritonserver.log").start()
    try:
        memory = PeakMemory(server.process.pid)
        server.wait_until_ready(timeout_s=3600)  # ONNX Runtime reads and optimises 14 GB of graphs
        load_s, loaded = time.perf_counter() - started, memory.peak
        with InpaintClient(address.grpc, timeout_s=3600) as client:
            result = client.inpaint(image=image, mask_image=mask, prompt="a wooden bench", num_inference_steps=2,
                                    strength=1.0, seed=0)
        peak, machine = memory.stop(), memory.machine_peak
    finally:
        server.stop()
    edited = np.asarray(result.image)
    print(f"served: loaded in {load_s:.0f} s; edit {result.elapsed_s:.0f} s, {edited.shape}; peak {peak / gib:.1f} GiB",
          flush=True)
    lines += [f"- served on onnx-cpu: ready in {load_s:.0f} s, {loaded / gib:.1f} GiB once loaded; peak during the "
              f"edit {peak / gib:.1f} GiB (PSS of tritonserver and its model processes), {machine / gib:.1f} GiB "
              f"more in use on the machine than before the server started",
              f"- one {side}x{side} edit, 2 steps (strength 1.0: 2 denoising steps, guidance 7.5, 4 UNet rows): "
              f"{result.elapsed_s:.0f} s; the result {edited.shape[1]}x{edited.shape[0]}, "
              f"{edited.shape[2]} channels; outside the mask byte-exact: "
              f"{bool(np.array_equal(edited[np.asarray(mask) < 128], np.asarray(image)[np.asarray(mask) < 128]))}"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
