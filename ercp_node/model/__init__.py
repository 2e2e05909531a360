"""U-Net (unet), losses, metrics and training (train). Submodules are imported on demand: importing Keras costs
seconds, and metrics needs only NumPy."""
