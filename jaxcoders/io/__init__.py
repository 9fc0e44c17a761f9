"""jaxcoders.io"""
