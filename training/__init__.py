"""Training stage: Fashion-MNIST data, the VAE definition, the training loop and evaluation."""
