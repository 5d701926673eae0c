"""Train LeNet-5 on the Fashion-MNIST sample bundled with cnnkit, with the library API rather than the CLI.

    python examples/train_lenet.py [EPOCHS] [BACKEND]

Writes checkpoints, the history (CSV and JSON) and, when matplotlib is installed, learning curves, a confusion
matrix and the first layer's filters to runs/lenet5-example/.
"""
import sys
from pathlib import Path

import cnnkit as ck
from cnnkit import data, io, train

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
backend = sys.argv[2] if len(sys.argv) > 2 else "numpy"
out = Path("runs/lenet5-example")

ck.nn.init.manual_seed(0)
train_set, test_set = data.load("fashion-mnist-sample", "train"), data.load("fashion-mnist-sample", "test")
train_set, val_set = data.split(train_set, (0.9, 0.1), seed=0)
model = ck.models.lenet5().to(backend)

# The CLI's pipeline: 28x28 padded to the model's 32x32, standardised with the training images' statistics.
mean, std = data.channel_stats(train_set)
prepare = data.prepare(train_set, model.input_shape, mean, std)
augment = data.prepare(train_set, model.input_shape, mean, std, augment=True)  # plus random shifts

optimizer = ck.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
config = train.TrainConfig(epochs=epochs, checkpoint_dir=out, monitor="val_acc", early_stopping=3)
history = train.fit(
    model,
    data.DataLoader(train_set, 32, shuffle=True, seed=0, transform=augment, backend=backend),
    data.DataLoader(val_set, 500, transform=prepare, backend=backend),
    optimizer=optimizer, schedule=ck.optim.CosineLR(optimizer, t_max=epochs), config=config,
)

model.load_state_dict(io.load_checkpoint(out / "best.npz")["model"])  # the best epoch by val accuracy
test_loader = data.DataLoader(test_set, 500, transform=prepare, backend=backend)
result = train.evaluate(model, test_loader)
print(f"test accuracy {result['accuracy']:.1%} on {result['n']} images")

try:
    from cnnkit import plots

    preds, labels = train.predict(model, test_loader)
    print("wrote", plots.learning_curves(history, out / "learning_curves.png"),
          plots.confusion_matrix(labels, preds, test_set.classes, out / "confusion_matrix.png"),
          plots.first_layer_filters(model, out / "filters.png"))
except ImportError as exc:  # matplotlib is optional: pip install 'cnnkit[plot]'
    print(f"no plots: {exc}")
