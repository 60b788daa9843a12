"""Peak memory of one request against its size and the batch size: the Executor in-process, real photos.

Each case runs in a fresh process that loads the ViT-B/32-shaped model, resets the kernel's
peak-RSS counter (``/proc/self/clear_refs``) and reports the peak reached while embedding one
request of N Documents carrying 640x480 JPEGs. Holding every decoded image would add about
0.9 MB per Document; the pipeline holds only the batches in flight.

    python benchmarks/memory.py --out benchmarks/MEMORY.md
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """
import asyncio, sys
from io import BytesIO
from pathlib import Path
from docarray import DocList
from PIL import Image
from skimage import data
from clip_image_encoder.service.documents import ImageDocument
from clip_image_encoder.service.executors import CLIPImageEncoder

def rss_mb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024

model_dir, count, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
jpegs = []
for i in range(count):
    buffer = BytesIO()
    Image.fromarray(photos[i % 4]).resize((640, 480)).rotate(i % 7).save(buffer, "JPEG", quality=90)
    jpegs.append(buffer.getvalue())
docs = DocList[ImageDocument]([ImageDocument(bytes_=jpeg) for jpeg in jpegs])
encoder = CLIPImageEncoder(pretrained_model_name_or_path=model_dir, batch_size=batch)
Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
before = rss_mb("VmRSS:")
asyncio.run(encoder.encode(docs=docs, parameters={}))
assert all(d.embedding is not None for d in docs)
print(before, rss_mb("VmHWM:"))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(tempfile.mkdtemp()) / "vit-b32"
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig()).save_pretrained(folder)
    CLIPImageProcessorPil().save_pretrained(folder)
    rows = []
    for count, batch in ((128, 32), (1024, 32), (128, 8), (128, 64)):
        before, peak = map(
            float,
            subprocess.run(
                [sys.executable, "-c", PROBE, str(folder), str(count), str(batch)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-2:],
        )
        rows.append(f"| {count} | {batch} | {before:.0f} | {peak:.0f} | {peak - before:.0f} |")
        print(rows[-1], flush=True)
    report = "\n".join(
        [
            "# Memory against request size and batch size",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; ViT-B/32-shaped "
            "model, float32, cpu; Documents carry 640x480 JPEGs (encoded, about 40 KB each).",
            "",
            "Command: `python benchmarks/memory.py --out benchmarks/MEMORY.md`",
            "",
            "| Documents in the request | batch | RSS before MB | peak RSS during MB | growth MB |",
            "| --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
