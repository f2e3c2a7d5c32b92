"""One-click launcher: ``python -m launch up`` runs CARLA (optional), carla_clients, the trainer, TensorBoard."""
