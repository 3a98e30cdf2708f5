"""Pure tensor maths of Faster R-CNN: box coding, anchors, matching and sampling, losses, RoIAlign.

No nn.Module and no config here: small functions (and the plain objects holding their
thresholds) on tensors whose shapes each docstring gives."""
