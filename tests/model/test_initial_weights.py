"""The detector of params.yaml, seed 0: its state_dict key names and a digest of its initial
weights are pinned, so a refactor that renames, reorders or re-draws anything is caught in seconds
rather than after a 10-minute `make repro` whose metrics differ.

The digest was taken from the code before the package was reorganised into folders (commit
4404957) and holds on any CPU with torch 2.14.1: initialisation draws from the CPU generator.
If a change alters the model on purpose, print the new values with
`python tests/model/test_initial_weights.py` and say why in the commit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from frcnn import build_model, load_config

REPO = Path(__file__).resolve().parents[2]
NUM_KEYS = 104
KEYS_SHA256 = "0bd697b54553f0ea88d84dabaa31369176c84867a818bcc73426295df28f56c6"
WEIGHTS_SHA256 = "b3a8b13fd44baf7f88196cb269cbb93c83df7e313c0d92f400b3c67bc3fd39ea"


def digests() -> tuple[int, str, str]:
    """(number of keys, sha256 of the key names, sha256 of names + values) of the seed-0 model."""
    torch.manual_seed(0)
    state = build_model(load_config(REPO / "params.yaml"), num_classes=6).state_dict()
    values = hashlib.sha256()
    for key, tensor in state.items():
        values.update(key.encode())
        values.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return len(state), hashlib.sha256("\n".join(state).encode()).hexdigest(), values.hexdigest()


def test_state_dict_keys_and_seed_0_initial_weights_are_unchanged() -> None:
    assert digests() == (NUM_KEYS, KEYS_SHA256, WEIGHTS_SHA256)


if __name__ == "__main__":
    print(digests())
