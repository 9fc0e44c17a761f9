"""jaxcoders.analysis"""
