"""jaxcoders.data"""
