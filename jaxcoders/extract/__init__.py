"""jaxcoders.extract"""
