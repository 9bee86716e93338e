"""The pixel normalization every clip carries: ImageNet mean / std per RGB channel, on [0, 1] pixels.

The loaders normalize with it (``(x/255 - mean) / std``); the pixel-loss target un-normalizes with
it (``x * std + mean``), as VideoMAE / AMD do. Standard library only, so the Triton kernels, the
loaders and the bench can all import it without pulling in each other.
"""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
