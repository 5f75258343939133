"""Serving: SavedModel export, a drop-in tensorflow_model_server, and a client."""
