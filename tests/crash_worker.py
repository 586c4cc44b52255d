"""Captures samples and saves the head in a loop until killed; used by the kill -9 test.

    python crash_worker.py STATE_DIR EMBEDDINGS.npy SEED

Prints ``ACK <class> <id>`` only after a sample is durable, ``DELETING <class> <id>`` before
and ``DEL <class> <id>`` after deleting one, ``SAVED`` after saving the head.
"""

import sys

import numpy as np

from edge_classifier.learning.augment import Augmentation
from edge_classifier.backbone.model import Backbone
from edge_classifier.learning.learner import Learner
from edge_classifier.learning.state import StateDir


def main() -> None:
    state, embeddings, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    base = np.load(embeddings)
    rng = np.random.default_rng(seed)
    backbone = Backbone.from_name(None, num_threads=1)
    learner = Learner(backbone, StateDir(state),
                      augmentation=Augmentation(flip=True))
    print("READY", flush=True)
    i = 0
    while True:
        name = f"class{i % 3}"
        views = base[i % len(base)] * (1 + 0.1 * rng.random(base.shape[1:]))
        _, sid = learner.add_views(name, views.astype(np.float32))
        print(f"ACK {name} {sid}", flush=True)
        if i % 4 == 3:
            learner.save()
            print("SAVED", flush=True)
        if i % 7 == 6:
            last = learner.store.sample_ids(name)[-1]
            print(f"DELETING {name} {last}", flush=True)
            learner.store.remove_sample(name, last)
            learner.changed()
            print(f"DEL {name} {last}", flush=True)
        i += 1


if __name__ == "__main__":
    main()
