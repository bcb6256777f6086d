"""Training of the shipped models: train_demo (the Fashion-MNIST DDPM), train_classifier (the
classifier of ``wgsl-diff eval``), and reship_demo.sh."""
