"""spikedet.metrics: detection metrics shared by train and deploy (numpy only): COCO mAP
(faster-coco-eval) and the Gen1 evaluation protocol."""
