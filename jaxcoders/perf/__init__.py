"""Performance measurement: FLOP accounting (`flops`) and the accelerator check (`accelerator`)."""
