"""jaxcoders.interventions"""
