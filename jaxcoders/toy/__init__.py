"""jaxcoders.toy"""
