"""The encoders: what each `model.encoder` is (specs, read by config without importing torch), one class per family
(mit, dinov2, dinov3_vit, dinov3_convnext) and the registry from a spec to its family (`register_encoder`)."""
