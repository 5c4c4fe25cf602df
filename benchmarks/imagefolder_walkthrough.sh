#!/usr/bin/env bash
# The README's image-folder walk-through, end to end, on a user-style folder of real images:
#   bash benchmarks/imagefolder_walkthrough.sh [WORKDIR]      (default: a fresh temporary directory)
# photos/: 140 Fashion-MNIST training images a class as PNGs (every other one a tinted RGB photo),
# under class names of our own; new-photos/: 100 a class from its test split. Then exactly the
# README's commands. The output (tables and logs) goes to WORKDIR/walkthrough.{out,err}; ~4 min on 2 cores.
set -euo pipefail
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK" && cd "$WORK"
python - <<'PY'
import numpy as np
from pathlib import Path
from PIL import Image
from askexpert.data import fashion_mnist
names = ["tee", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
source = fashion_mnist.locate(None, allow_download=False)
for split, folder, n in (("train", "photos", 140), ("test", "new-photos", 100)):
    images, labels = (a.numpy() for a in fashion_mnist.load_split(source, split))
    for c, name in enumerate(names):
        d = Path(folder) / name
        d.mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(np.flatnonzero(labels == c)[:n]):
            gray = images[i, 0]
            tinted = (gray[..., None] * np.array([1.0, 0.8, 0.55])).astype(np.uint8)
            (Image.fromarray(gray) if j % 2 == 0 else Image.fromarray(tinted, "RGB")).save(d / f"{j:04d}.png")
PY
PORT=$(python -c "from askexpert_lab.testbed.server import free_port; print(free_port())")
{
set -x
askexpert datasets imagefolder:photos
askexpert train generalist --data imagefolder:photos --model vit-mini-edge-28 --epochs 15 --batch-size 32 \
    --name my-gen
askexpert train experts --strategy general --data imagefolder:photos --model vit-mini-expert-28 --epochs 30 \
    --batch-size 32 --name my-general
askexpert partition runs/my-gen --num-experts 3
askexpert train experts --strategy progressive --init runs/my-general \
    --partition runs/my-gen/partition-confusion-3.json --passes 10 --batch-size 32 --name my-experts
askexpert eval runs/my-experts
askexpert evaluate-system runs/my-gen runs/my-general --experts progressive=runs/my-experts
askexpert build-system runs/my-gen runs/my-experts --out my-system
askexpert serve my-system --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
until curl -sf "http://127.0.0.1:$PORT/v1/health" >/dev/null; do sleep 0.5; done
askexpert edge my-system --server "http://127.0.0.1:$PORT" --input new-photos/ --predictions predictions.csv
} > walkthrough.out 2> walkthrough.err
echo "done: $WORK/walkthrough.out (tables), $WORK/walkthrough.err (logs), $WORK/predictions.csv"
