"""Stage 3: the on-device runtime and Raspberry Pi app (`edge-app`). Never imports TensorFlow."""
