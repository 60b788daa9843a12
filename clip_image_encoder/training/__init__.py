"""Self-supervised fine-tuning (SimCLR, Barlow Twins, SwAV) of a served backbone on a folder of images.

    augmentations  the views, with kornia on tensors on the training device
    losses         NT-Xent, Barlow Twins, SwAV with Sinkhorn-Knopp
    methods        the registry of methods: views, head, loss, hyper-parameters
    data           the folder: listing, decoding (the Executor's code), broken files, batches
    trainer        the loop: seed, mixed precision, accumulation, checkpoints, resume (`train`, `TrainConfig`)
    saving         the model folder the Executor serves, and the training record
    command        ``clip-image-encoder train``

This module imports nothing heavy, so that the command line's ``--help`` stays fast.
"""
