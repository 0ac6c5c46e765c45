"""Models: backbones (MViTv2 via timm, ResNet50), FPN, RPN, cascade box heads, mask head."""
