"""jaxcoders.data: the ActivationStore (store.py) and the batch Loader (loader.py); never imports torch."""
