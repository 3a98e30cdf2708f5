"""Detection metrics: COCO (`coco`, pycocotools) and VOC AP by the devkit's rules (`voc`),
and the tables written from them (`tables`). How the two AP50s differ: `voc`'s docstring."""
