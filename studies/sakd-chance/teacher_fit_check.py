"""Cross-entropy and top-1 of cached ResNet-20 teachers on the students' 6,000 training images (unaugmented,
the class-balanced subset data.seed 0 picks) and on the test split: is the "fitted" teacher fitted?

    ADAKD_DATA=$PWD/../shared/data python studies/sakd-chance/teacher_fit_check.py CHECKPOINT.pt [...] \
        > studies/sakd-chance/teacher_fit.txt
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from adakd.config import DataConfig, TeacherConfig
from adakd.data import build_data
from adakd.engine.teacher import load_teacher

torch.set_num_threads(1)
data = build_data(DataConfig(name="fashion_mnist", batch_size=500, train_subset=6000), torch.device("cpu"), seed=0)
train = data.train


def train_batches():
    """The training subset in order, without augmentation."""
    for start in range(0, len(train.labels), 500):
        yield train.batch(torch.arange(start, min(start + 500, len(train.labels))))


for checkpoint in sys.argv[1:]:
    model = load_teacher(TeacherConfig(name="resnet20", checkpoint=checkpoint), data.info, torch.device("cpu"),
                         Path(checkpoint))
    for split, batches in (("train6k", train_batches), ("test", lambda: iter(data.test))):
        ce = correct = count = 0.0
        with torch.no_grad():
            for batch in batches():
                logits = model(batch.x)
                ce += F.cross_entropy(logits, batch.y, reduction="sum").item()
                correct += (logits.argmax(1) == batch.y).sum().item()
                count += len(batch.y)
        print(f"{Path(checkpoint).parents[1].name[:40]} {split} CE {ce / count:.4f} top-1 {100 * correct / count:.2f}% "
              f"n={int(count)}")
